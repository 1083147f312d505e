//! Usage, cost and limits: one usage record per generation whatever its end, the dashboard API with ETags,
//! budgets under concurrency, rate and concurrency limits, and Prometheus metrics.

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
    every_ending_is_billed_exactly_once,
    usage_api_groups_totals_and_etags,
    budgets_hold_under_concurrent_requests
);

async fn every_ending_is_billed_exactly_once(backend: Backend) {
    let upstream = FakeOpenAi::start(vec![
        // complete, with the provider's usage
        Script::stream(full_stream(&["all ", "done"], 1000, 10, Duration::ZERO)),
        // failed mid-stream
        Script::stream(vec![
            Step::Chunk(role_chunk()),
            Step::Chunk(content_chunk("half")),
            Step::Delay(Duration::from_millis(30)),
            Step::Die,
        ]),
        // cancelled: hangs after one piece
        Script::stream(vec![
            Step::Chunk(role_chunk()),
            Step::Chunk(content_chunk("stop me")),
            Step::Gate,
        ]),
        // the client leaves; the reply completes (drain)
        Script::stream({
            let mut steps = vec![
                Step::Chunk(role_chunk()),
                Step::Chunk(content_chunk("still ")),
                Step::Gate,
            ];
            steps.extend(
                full_stream(&["here"], 20, 2, Duration::ZERO)
                    .into_iter()
                    .skip(1),
            );
            steps
        }),
    ])
    .await;
    let Some(server) = TestServer::start(backend, Some(&upstream.url), "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let path = format!("/api/v1/conversations/{conversation_id}/messages");

    let complete = server
        .post(&path, "alice", json!({ "content": "one" }))
        .send()
        .await
        .expect("send");
    assert_eq!(complete.status(), 200);
    let failed = server
        .post(&path, "alice", json!({ "content": "two" }))
        .send()
        .await
        .expect("send");
    assert_eq!(failed.status(), 502);

    let accepted: Value = server
        .post(&path, "alice", json!({ "content": "three" }))
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let generation_id = accepted["generation_id"].as_str().expect("id").to_string();
    let mut events = sse_events(
        server
            .get(
                &format!("/api/v1/generations/{generation_id}/stream"),
                "alice",
            )
            .send()
            .await
            .expect("stream"),
    );
    while events.next().await.expect("event").event != "delta" {}
    let cancelled: Value = server
        .post(
            &format!("/api/v1/generations/{generation_id}/cancel"),
            "alice",
            json!({}),
        )
        .send()
        .await
        .expect("cancel")
        .json()
        .await
        .expect("json");
    assert_eq!(cancelled["message"]["status"], "cancelled");

    let response = server
        .post(&path, "alice", json!({ "content": "four" }))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("send");
    let mut events = sse_events(response);
    while events.next().await.expect("event").event != "delta" {}
    drop(events);
    upstream.release();
    for _ in 0..200 {
        let history = server.history("alice", &conversation_id).await;
        if history
            .iter()
            .filter(|m| m["role"] == "assistant" && m["status"] != "streaming")
            .count()
            == 4
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let history = server.history("alice", &conversation_id).await;
    let replies: Vec<&Value> = history
        .iter()
        .filter(|m| m["role"] == "assistant")
        .collect();
    let statuses: Vec<&str> = replies
        .iter()
        .map(|m| m["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(statuses, ["complete", "failed", "cancelled", "complete"]);
    let mut total_cost = 0;
    for reply in &replies {
        let records = server
            .state
            .store
            .usage_for_message(reply["id"].as_str().expect("id").parse().expect("id"))
            .await
            .expect("usage");
        assert_eq!(
            records.len(),
            1,
            "exactly one usage record for the {} reply",
            reply["status"]
        );
        total_cost += records[0].cost_nanousd;
    }
    // The provider's figures where it sent them, priced exactly: 1000 × 150 + 10 × 600.
    let first = server
        .state
        .store
        .usage_for_message(replies[0]["id"].as_str().expect("id").parse().expect("id"))
        .await
        .expect("usage");
    assert_eq!(
        (
            first[0].prompt_tokens,
            first[0].completion_tokens,
            first[0].estimated,
            first[0].cost_nanousd
        ),
        (1000, 10, false, 156_000)
    );
    // The dashboard's totals are the sum of the records.
    let usage: Value = server
        .get_json("/api/v1/usage?group_by=model", "alice")
        .await;
    assert_eq!(usage["totals"]["requests"], 4);
    assert_eq!(
        usage["totals"]["estimated_requests"], 2,
        "the failed and cancelled replies had no provider usage"
    );
    assert_eq!(
        usage["totals"]["cost_usd"].as_f64(),
        Some(total_cost as f64 / 1e9)
    );
}

async fn usage_api_groups_totals_and_etags(backend: Backend) {
    let Some(server) = TestServer::start(backend, None, "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let path = format!("/api/v1/conversations/{conversation_id}/messages");
    for content in ["a", "b"] {
        assert_eq!(
            server
                .post(&path, "alice", json!({ "content": content }))
                .send()
                .await
                .expect("send")
                .status(),
            200
        );
    }
    let bob_conversation = server.conversation("bob").await;
    server
        .send_message(&bob_conversation, "bob", json!({ "content": "c" }))
        .send()
        .await
        .expect("send");

    let by_day = server
        .get("/api/v1/usage", "alice")
        .send()
        .await
        .expect("usage");
    assert_eq!(by_day.status(), 200);
    let etag = by_day.headers()["etag"].to_str().expect("etag").to_string();
    let by_day: Value = by_day.json().await.expect("json");
    let buckets = by_day["buckets"].as_array().expect("buckets");
    assert_eq!(
        buckets.len(),
        30,
        "every day of the default 30-day range, empty days included"
    );
    let today = chrono::Utc::now().date_naive().to_string();
    assert_eq!(buckets.last().expect("today")["key"], today.as_str());
    assert_eq!(
        buckets.last().expect("today")["requests"],
        2,
        "bob's usage is not alice's"
    );
    let tokens = by_day["totals"]["total_tokens"].as_i64().expect("tokens");
    assert!(tokens > 0);

    let by_model: Value = server
        .get_json("/api/v1/usage?group_by=model", "alice")
        .await;
    assert_eq!(by_model["buckets"][0]["key"], "mock");
    let by_persona: Value = server
        .get_json("/api/v1/usage?group_by=persona", "alice")
        .await;
    assert_eq!(
        by_persona["buckets"][0]["key"],
        server.persona_id().await.as_str()
    );

    // Unchanged: 304 with the same ETag; after another reply: 200 with a new one.
    let again = server
        .get("/api/v1/usage", "alice")
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("usage");
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().ok(), Some(etag.as_str()));
    assert_eq!(
        server
            .post(&path, "alice", json!({ "content": "c" }))
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    let changed = server
        .get("/api/v1/usage", "alice")
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("usage");
    assert_eq!(changed.status(), 200);
    assert_ne!(changed.headers()["etag"].to_str().ok(), Some(etag.as_str()));

    let summary = server
        .get("/api/v1/usage/summary", "alice")
        .send()
        .await
        .expect("summary");
    let summary_etag = summary.headers()["etag"]
        .to_str()
        .expect("etag")
        .to_string();
    let summary: Value = summary.json().await.expect("json");
    assert_eq!(summary["total_conversations"], 1);
    assert_eq!(summary["total_messages"], 6);
    assert!(summary["total_tokens"].as_i64().expect("tokens") > tokens);
    assert_eq!(
        summary["estimated_cost_usd"].as_f64().map(|c| c > 0.0),
        Some(true),
        "mock model priced at 1/2 USD per Mtok in tests"
    );
    let again = server
        .get("/api/v1/usage/summary", "alice")
        .header("if-none-match", &summary_etag)
        .send()
        .await
        .expect("summary");
    assert_eq!(again.status(), 304);

    // Bad ranges are 400s; the admin view is for admins.
    for query in [
        "from=2026-13-01",
        "from=2026-01-10&to=2026-01-01",
        "from=2020-01-01&to=2026-01-01",
        "group_by=user",
        "group_by=week",
    ] {
        let response = server
            .get(&format!("/api/v1/usage?{query}"), "alice")
            .send()
            .await
            .expect("usage");
        assert_eq!(response.status(), 400, "{query}");
    }
    assert_eq!(
        server
            .get("/api/v1/admin/usage", "alice")
            .send()
            .await
            .expect("admin")
            .status(),
        403
    );
    let all: Value = server
        .client
        .get(format!("{}/api/v1/admin/usage?group_by=user", server.url))
        .bearer_auth(server.admin_token("root"))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    let users: Vec<(&str, i64)> = all["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| {
            (
                b["key"].as_str().unwrap_or(""),
                b["requests"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(users, [("alice", 3), ("bob", 1)]);
    let only_bob: Value = server
        .client
        .get(format!(
            "{}/api/v1/admin/usage?user_id=bob&group_by=model",
            server.url
        ))
        .bearer_auth(server.admin_token("root"))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    assert_eq!(only_bob["totals"]["requests"], 1);
}

async fn budgets_hold_under_concurrent_requests(backend: Backend) {
    // A slow mock with a 50-token reply allowance; the budget fits three reservations, not four.
    let extra = "[providers.slow]\nkind = \"mock\"\ndelay_ms = 30\n\
                 [models.capped]\nprovider = \"slow\"\nmodel = \"mock-1\"\nmax_output_tokens = 50\n\
                 input_per_mtok = 1.0\noutput_per_mtok = 2.0\n";
    let Some(probe) = TestServer::start(backend, None, extra).await else {
        return;
    };
    // Measure one request's reservation: its prompt's upper bound plus the allowance.
    let conversation_id = probe.conversation("probe").await;
    let sent: Value = probe
        .send_message(
            &conversation_id,
            "probe",
            json!({ "content": "hello budget", "model": "capped" }),
        )
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let actual = sent["assistant_message"]["tokens_used"]
        .as_u64()
        .expect("tokens");
    assert!(actual < 400, "{actual}");
    drop(probe);

    let budget = 3 * 400 + 200;
    let extra =
        format!("{extra}[limits]\ndaily_token_budget = {budget}\nmax_concurrent_generations = 0\n");
    let Some(server) = TestServer::start(backend, None, &extra).await else {
        return;
    };
    let mut conversations = Vec::new();
    for _ in 0..10 {
        conversations.push(server.conversation("alice").await);
    }
    let requests = conversations.iter().map(|conversation_id| {
        server
            .send_message(
                conversation_id,
                "alice",
                json!({ "content": "hello budget", "model": "capped" }),
            )
            .send()
    });
    let responses = futures::future::join_all(requests).await;
    let mut admitted = 0;
    for response in responses {
        let response = response.expect("send");
        match response.status().as_u16() {
            200 => admitted += 1,
            429 => {
                let retry_after: u64 = response.headers()["retry-after"]
                    .to_str()
                    .expect("header")
                    .parse()
                    .expect("seconds");
                assert!(retry_after > 0 && retry_after <= 86_400);
                let body: Value = response.json().await.expect("json");
                assert_eq!(body["error"], "budget_exceeded");
                assert_eq!(body["details"]["limit"], "daily_token_budget");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(admitted >= 1, "the budget admits some requests");
    let usage: Value = server.get_json("/api/v1/usage", "alice").await;
    let used = usage["totals"]["total_tokens"].as_u64().expect("tokens");
    assert_eq!(usage["totals"]["requests"].as_u64(), Some(admitted));
    assert!(
        used <= budget,
        "no overshoot: each reply stayed within its reservation ({used} of {budget})"
    );
    // Refused requests wrote nothing: each conversation holds a user message only if it was admitted.
    let mut with_messages = 0;
    for conversation_id in &conversations {
        if !server.history("alice", conversation_id).await.is_empty() {
            with_messages += 1;
        }
    }
    assert_eq!(with_messages, admitted);
}

#[tokio::test]
async fn rate_and_concurrency_limits_answer_429_naming_the_limit() {
    let extra = "[limits]\nrequests_per_minute = 60\nburst = 3\n";
    let Some(server) = TestServer::start(Backend::Sqlite, None, extra).await else {
        return;
    };
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            server
                .get("/api/v1/conversations", "alice")
                .send()
                .await
                .expect("list"),
        );
    }
    let refused = statuses.pop().expect("last");
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.expect("json");
    assert_eq!(
        (body["error"].as_str(), body["details"]["limit"].as_str()),
        (Some("rate_limited"), Some("requests_per_minute"))
    );
    assert_eq!(
        server
            .get("/api/v1/conversations", "bob")
            .send()
            .await
            .expect("bob")
            .status(),
        200,
        "limits are per user"
    );

    let upstream = FakeOpenAi::start(vec![Script::stream(vec![
        Step::Chunk(role_chunk()),
        Step::Gate,
    ])])
    .await;
    let Some(server) = TestServer::start(
        Backend::Sqlite,
        Some(&upstream.url),
        "[limits]\nmax_concurrent_generations = 1\n",
    )
    .await
    else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let path = format!("/api/v1/conversations/{conversation_id}/messages");
    let first = server
        .post(&path, "alice", json!({ "content": "one" }))
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("first");
    assert_eq!(first.status(), 202);
    let second = server
        .post(&path, "alice", json!({ "content": "two" }))
        .send()
        .await
        .expect("second");
    assert_eq!(second.status(), 429);
    let body: Value = second.json().await.expect("json");
    assert_eq!(body["details"]["limit"], "max_concurrent_generations");
    let other = server.conversation("bob").await;
    let bobs = server
        .send_message(&other, "bob", json!({ "content": "x" }))
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("bob");
    assert_eq!(bobs.status(), 202);
    upstream.release();
    upstream.release();
}

/// The sum of the metric lines `name{labels} value` whose labels contain `labels` (0 when none).
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// `/metrics` as an admin sees it.
async fn scrape(server: &TestServer) -> String {
    let response = server
        .client
        .get(format!("{}/metrics", server.url))
        .bearer_auth(server.admin_token("ops"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), 200);
    response.text().await.expect("text")
}

#[tokio::test]
async fn metrics_move_and_are_for_admins() {
    let upstream = FakeOpenAi::start(vec![Script::stream(full_stream(
        &["a", "b", "c"],
        5,
        3,
        Duration::from_millis(5),
    ))])
    .await;
    let Some(server) = TestServer::start(Backend::Sqlite, Some(&upstream.url), "").await else {
        return;
    };
    let before = scrape(&server).await;
    let conversation_id = server.conversation("alice").await;
    let response = server
        .send_message(&conversation_id, "alice", json!({ "content": "hi" }))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("send");
    let events: Vec<_> = sse_events(response).collect().await;
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"));
    let after = scrape(&server).await;
    for (name, labels) in [
        ("chatgate_generations_started_total", "model=\"gpt\""),
        (
            "chatgate_generations_finished_total",
            "outcome=\"complete\"",
        ),
        ("chatgate_ttft_seconds_count", "provider=\"fake\""),
        ("chatgate_gateway_overhead_seconds_count", ""),
        ("chatgate_db_write_seconds_count", "op=\"save\""),
    ] {
        assert!(
            metric(&after, name, labels) >= metric(&before, name, labels) + 1.0,
            "{name}{{{labels}}} moved:\n{after}"
        );
    }
    assert!(
        metric(&after, "chatgate_deltas_relayed_total", "provider=\"fake\"")
            >= metric(
                &before,
                "chatgate_deltas_relayed_total",
                "provider=\"fake\""
            ) + 3.0
    );
    assert!(
        after.lines().any(|l| l
            .starts_with("chatgate_gateway_overhead_seconds_bucket{transport=\"sse\"")
            && l.contains("le=\"0.005\"")),
        "a histogram with buckets"
    );

    assert_eq!(
        server
            .get("/metrics", "alice")
            .send()
            .await
            .expect("user")
            .status(),
        403
    );
    assert_eq!(
        server
            .client
            .get(format!("{}/metrics", server.url))
            .send()
            .await
            .expect("anon")
            .status(),
        401
    );
    let Some(open) =
        TestServer::start(Backend::Sqlite, None, "[server]\nmetrics_public = true\n").await
    else {
        return;
    };
    assert_eq!(
        open.client
            .get(format!("{}/metrics", open.url))
            .send()
            .await
            .expect("anon")
            .status(),
        200
    );
}

/// Every family is described (`# HELP`, `# TYPE`), the counters are there at 0 before any traffic, per model,
/// and a reply moves tokens and cost by model. Prometheus's own parser (`prometheus_client`) reads it all when
/// installed.
#[tokio::test]
async fn metrics_are_described_and_there_from_the_start() {
    let Some(server) = TestServer::start(Backend::Sqlite, None, "").await else {
        return;
    };
    let before = scrape(&server).await;
    for &(name, kind, _, help) in chatgate::telemetry::metrics::FAMILIES {
        use chatgate::telemetry::metrics::Kind;
        // Histograms appear with their first observation, and counters labelled by what happens (an error's
        // kind, an upload's) with their first event; what is scraped is described.
        if !before
            .lines()
            .any(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ', '_']))
        {
            continue;
        }
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        assert!(
            before.contains(&format!("# HELP {name} {help}")),
            "HELP of {name}:\n{before}"
        );
        assert!(
            before.contains(&format!("# TYPE {name} {kind}")),
            "TYPE of {name}:\n{before}"
        );
    }
    for (name, labels) in [
        ("chatgate_generations_started_total", "model=\"mock\""),
        (
            "chatgate_tokens_total",
            "model=\"mock\",provider=\"mock\",kind=\"completion\"",
        ),
        ("chatgate_cost_nanousd_total", "model=\"mock\""),
        ("chatgate_active_generations", ""),
    ] {
        assert!(
            before
                .lines()
                .any(|l| l.starts_with(name) && l.contains(labels)),
            "{name}{{{labels}}} is scraped before any traffic:\n{before}"
        );
    }
    let conversation_id = server.conversation("alice").await;
    server
        .send_message(&conversation_id, "alice", json!({ "content": "price me" }))
        .send()
        .await
        .expect("send");
    server.wait_for_reply("alice", &conversation_id).await;
    let mut after = scrape(&server).await;
    for _ in 0..50 {
        if metric(&after, "chatgate_cost_nanousd_total", "model=\"mock\"")
            > metric(&before, "chatgate_cost_nanousd_total", "model=\"mock\"")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = scrape(&server).await;
    }
    // The mock is priced at 1 and 2 USD per million tokens here: any reply costs something.
    for (name, labels) in [
        ("chatgate_cost_nanousd_total", "model=\"mock\""),
        (
            "chatgate_tokens_total",
            "model=\"mock\",provider=\"mock\",kind=\"completion\"",
        ),
    ] {
        assert!(
            metric(&after, name, labels) > metric(&before, name, labels),
            "{name}{{{labels}}} moved:\n{after}"
        );
    }

    let parser = std::process::Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !parser {
        common::skipped("the Prometheus parser check: pip install prometheus-client");
        return;
    }
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
families = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
for name in ("chatgate_generations_started", "chatgate_tokens", "chatgate_cost_nanousd", "chatgate_active_generations"):
    assert name in families, (name, sorted(families))
    assert families[name].documentation, name
assert families["chatgate_tokens"].type == "counter"
print("ok")
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(after.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("parse");
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "ok",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `chatgate_gateway_overhead_seconds` is measured on each of the five transports a reply streams on, labelled
/// by it: native SSE, the AI SDK stream, a WebSocket `send`, and streamed `/v1/chat/completions` and
/// `/v1/responses`.
#[tokio::test]
async fn gateway_overhead_is_measured_on_every_transport() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    let Some(server) = TestServer::start(Backend::Sqlite, None, "").await else {
        return;
    };
    let count = |text: &str, transport: &str| {
        metric(
            text,
            "chatgate_gateway_overhead_seconds_count",
            &format!("transport=\"{transport}\""),
        )
    };
    let before = scrape(&server).await;
    let conversation_id = server.conversation("alice").await;

    // Native SSE and the AI SDK stream, read to their end.
    for (query, transport) in [("", "sse"), ("?format=ai-sdk", "ai_sdk")] {
        let response = server
            .post(
                &format!("/api/v1/conversations/{conversation_id}/messages{query}"),
                "alice",
                json!({ "content": "hi" }),
            )
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{transport}");
        let body = response.text().await.expect("stream");
        assert!(!body.is_empty(), "{transport}");
    }
    // OpenAI's two streamed endpoints.
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({ "model": "mock", "stream": true, "messages": [{ "role": "user", "content": "hi" }] }),
        ),
        (
            "/v1/responses",
            json!({ "model": "mock", "stream": true, "input": "hi" }),
        ),
    ] {
        let response = server.post(path, "alice", body).send().await.expect(path);
        assert_eq!(response.status(), 200, "{path}");
        let text = response.text().await.expect("stream");
        assert!(text.contains("data: "), "{path}: {text}");
    }
    // A WebSocket `send`, followed to its `done`.
    let url = format!(
        "{}/api/v1/ws?access_token={}",
        server.url.replace("http://", "ws://"),
        server.token("alice")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let frame =
        json!({ "type": "send", "id": "m1", "conversation_id": conversation_id, "content": "hi" });
    socket
        .send(WsMessage::Text(frame.to_string().into()))
        .await
        .expect("send frame");
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if let WsMessage::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).expect("json");
            assert_ne!(frame["type"], "error", "{frame}");
            if frame["type"] == "done" {
                break;
            }
        }
    }

    let after = scrape(&server).await;
    for transport in chatgate::telemetry::metrics::Transport::ALL {
        let label = transport.as_str();
        assert!(
            count(&after, label) >= count(&before, label) + 1.0,
            "{label} measured:\n{}",
            after
                .lines()
                .filter(|l| l.contains("gateway_overhead"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
