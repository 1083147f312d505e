//! The API description: `/openapi.json` is a valid OpenAPI 3.1 document naming every route of DESIGN.md, and
//! `/docs` serves Swagger UI from the binary (no CDN), both without a token.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use common::{Backend, TestServer};
use serde_json::Value;

/// The routes of DESIGN.md's table, with the routes added since (titles, admin usage, media download, the
/// conversation's running reply, one OpenAI model).
const ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/api/v1/personas"),
    ("post", "/api/v1/personas"),
    ("get", "/api/v1/personas/{id}"),
    ("patch", "/api/v1/personas/{id}"),
    ("delete", "/api/v1/personas/{id}"),
    ("post", "/api/v1/conversations"),
    ("get", "/api/v1/conversations"),
    ("get", "/api/v1/conversations/{id}"),
    ("patch", "/api/v1/conversations/{id}"),
    ("delete", "/api/v1/conversations/{id}"),
    ("post", "/api/v1/conversations/{id}/title"),
    ("post", "/api/v1/conversations/{id}/messages"),
    ("get", "/api/v1/conversations/{id}/messages"),
    ("delete", "/api/v1/messages/{id}"),
    ("post", "/api/v1/messages/{id}/regenerate"),
    ("get", "/api/v1/generations/{id}"),
    ("get", "/api/v1/generations/{id}/stream"),
    ("post", "/api/v1/generations/{id}/cancel"),
    ("get", "/api/v1/conversations/{id}/stream"),
    ("get", "/api/v1/ws"),
    ("post", "/api/v1/media"),
    ("get", "/api/v1/media/{id}"),
    ("get", "/api/v1/models"),
    ("get", "/api/v1/usage"),
    ("get", "/api/v1/usage/summary"),
    ("get", "/api/v1/admin/usage"),
    ("post", "/v1/chat/completions"),
    ("get", "/v1/models"),
    ("get", "/v1/models/{id}"),
    ("post", "/v1/responses"),
];

#[tokio::test]
async fn the_document_names_every_route_and_validates() {
    let Some(server) = TestServer::start(Backend::Sqlite, None, "").await else {
        return;
    };
    let response = server
        .client
        .get(format!("{}/openapi.json", server.url))
        .send()
        .await
        .expect("openapi");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let raw = response.text().await.expect("body");
    let doc: Value = serde_json::from_str(&raw).expect("json");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let missing: Vec<_> = ROUTES
        .iter()
        .filter(|(method, path)| doc["paths"][path][method].is_null())
        .collect();
    assert!(missing.is_empty(), "not in /openapi.json: {missing:?}");
    let mut operation_ids: Vec<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .flat_map(|item| item.as_object().expect("path item").values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let operations = operation_ids.len();
    operation_ids.sort_unstable();
    operation_ids.dedup();
    assert_eq!(operation_ids.len(), operations, "operationIds are unique");
    // Protected routes say they need the bearer token; public ones say they do not.
    assert_eq!(
        doc["security"][0]["bearer"],
        serde_json::json!([]),
        "bearer by default"
    );
    assert_eq!(
        doc["paths"]["/health"]["get"]["security"],
        serde_json::json!([{}])
    );
    // Request and error bodies are described, not just named.
    let send = &doc["paths"]["/api/v1/conversations/{id}/messages"]["post"];
    let body_ref = send["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .expect("send body schema");
    let name = body_ref.rsplit('/').next().expect("name");
    assert!(
        doc["components"]["schemas"][name]["properties"]["content"].is_object(),
        "{name}"
    );
    assert!(doc["components"]["schemas"]["ErrorBody"]["properties"]["error"].is_object());
    // Every JSON answer, success or error, names a schema with its fields: none is a bare object, so generated
    // clients get typed models rather than dicts.
    let mut untyped = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            for (status, response) in op["responses"].as_object().into_iter().flatten() {
                let schema = &response["content"]["application/json"]["schema"];
                if schema.is_null() {
                    continue;
                }
                let named = schema["$ref"]
                    .as_str()
                    .map(|r| r.rsplit('/').next().unwrap_or(r));
                let schema = named.map_or(schema, |name| &doc["components"]["schemas"][name]);
                // Its own fields, or (a flattened struct) those of the parts it is all of.
                let has_fields =
                    |s: &Value| s["properties"].as_object().is_some_and(|f| !f.is_empty());
                let typed = has_fields(schema)
                    || schema["allOf"].as_array().is_some_and(|parts| {
                        parts.iter().all(|p| p["$ref"].is_string() || has_fields(p))
                    });
                if !typed {
                    untyped.push(format!("{method} {path} {status}"));
                }
            }
        }
    }
    assert!(
        untyped.is_empty(),
        "JSON answers without a typed schema: {untyped:?}"
    );

    // A real validator, when installed (`.ci/run` installs openapi-spec-validator).
    let available = std::process::Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        common::skipped(
            "validating /openapi.json: python3 with openapi-spec-validator is not installed",
        );
        return;
    }
    let path = std::env::temp_dir().join(format!("chatgate-openapi-{}.json", std::process::id()));
    std::fs::write(&path, &raw).expect("write");
    let output = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .expect("run validator");
    let _ = std::fs::remove_file(&path);
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{}",
        said.chars().take(3000).collect::<String>(),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_docs_page_is_served_from_the_binary() {
    let Some(server) = TestServer::start(Backend::Sqlite, None, "").await else {
        return;
    };
    let page = server
        .client
        .get(format!("{}/docs/", server.url))
        .send()
        .await
        .expect("docs");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("swagger-ui"), "{html}");
    // Every script and stylesheet the page loads is ours, local, and served.
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|s| s.ends_with(".js") || s.ends_with(".css"))
        .collect();
    assert!(!assets.is_empty());
    for asset in assets {
        assert!(!asset.starts_with("http"), "{asset} is remote");
        let url = format!("{}/docs/{}", server.url, asset.trim_start_matches("./"));
        let response = server.client.get(&url).send().await.expect("asset");
        assert_eq!(response.status(), 200, "{url}");
    }
    let init = server
        .client
        .get(format!("{}/docs/swagger-initializer.js", server.url))
        .send()
        .await
        .expect("initializer")
        .text()
        .await
        .expect("js");
    assert!(init.contains("/openapi.json"), "{init}");
}

/// A schema's `required` and `properties` keys, following a `$ref` into `components.schemas`.
fn schema_keys(doc: &Value, name: &str) -> (Vec<String>, Vec<String>) {
    let schema = &doc["components"]["schemas"][name];
    assert!(schema.is_object(), "no schema {name}");
    let keys = |v: &Value| -> Vec<String> {
        match v {
            Value::Array(items) => items
                .iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect(),
            Value::Object(map) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    };
    (keys(&schema["required"]), keys(&schema["properties"]))
}

/// Real answers have every field their documented schema requires, and no field it does not name (a client
/// generated from the document reads them without a KeyError).
#[tokio::test]
async fn usage_responses_match_their_schemas() {
    let Some(server) = TestServer::start(Backend::Sqlite, None, "").await else {
        return;
    };
    let conversation = server.conversation("alice").await;
    server
        .send_message(
            &conversation,
            "alice",
            serde_json::json!({ "content": "count me" }),
        )
        .send()
        .await
        .expect("send");
    server.wait_for_reply("alice", &conversation).await;
    let doc = server.get_json("/openapi.json", "reader").await;
    let check = |name: &str, value: &Value| {
        let (required, properties) = schema_keys(&doc, name);
        let object = value
            .as_object()
            .unwrap_or_else(|| panic!("{name}: {value}"));
        for key in &required {
            assert!(object.contains_key(key), "{name} requires {key}: {value}");
        }
        for key in object.keys() {
            assert!(
                properties.contains(key),
                "{name} does not name {key}: {value}"
            );
        }
    };
    let summary = server.get_json("/api/v1/usage/summary", "alice").await;
    check("UsageSummary", &summary);
    for group_by in ["day", "model", "persona"] {
        let report = server
            .get_json(&format!("/api/v1/usage?group_by={group_by}"), "alice")
            .await;
        check("UsageReport", &report);
        check("UsageTotals", &report["totals"]);
        let buckets = report["buckets"].as_array().expect("buckets");
        assert!(!buckets.is_empty(), "{report}");
        for bucket in buckets {
            check("UsageTotals", bucket);
        }
    }
    // The operations point at them.
    let ok = |path: &str| {
        doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].clone()
    };
    assert_eq!(ok("/api/v1/usage"), "#/components/schemas/UsageReport");
    assert_eq!(
        ok("/api/v1/usage/summary"),
        "#/components/schemas/UsageSummary"
    );
    server.stop().await;
}

/// schemathesis (`.ci/run` installs it) against the live server: examples, boundary values and fuzzed inputs for
/// every route, as an admin (so the admin routes are reached too), checking that no answer is a 5xx and that every
/// status, content type, header and body is the one `/openapi.json` documents. Schema-valid requests that the
/// handlers refuse (a message's content rules, a multipart part, a WebSocket without its upgrade) are not
/// counted against the document: its request schemas are looser than the validation they describe.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let installed = std::process::Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        common::skipped("schemathesis: it is not installed (pip install schemathesis)");
        return;
    }
    let Some(server) = TestServer::start(Backend::Sqlite, None, "").await else {
        return;
    };
    let token = server.admin_token("fuzzer");
    let url = format!("{}/openapi.json", server.url);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("schemathesis")
            .args(["run", &url, "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .args([
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "40",
                "--exclude-checks",
                "positive_data_acceptance",
                "--seed",
                "20261130",
                "--workers",
                "1",
            ])
            .env("NO_COLOR", "1")
            .output()
    })
    .await
    .expect("join")
    .expect("run schemathesis");
    let said = String::from_utf8_lossy(&output.stdout);
    let summary = said
        .rfind("SUMMARY")
        .map_or(said.as_ref(), |at| &said[at..]);
    eprintln!("schemathesis summary:\n{summary}");
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{}\n{}",
        said.chars().take(20_000).collect::<String>(),
        String::from_utf8_lossy(&output.stderr)
    );
    // Every operation of the document was exercised.
    let doc = server.get_json("/openapi.json", "reader").await;
    let operations: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| item.as_object().map_or(0, serde_json::Map::len))
        .sum();
    assert!(
        summary.contains(&format!("Tested: {operations}\n")),
        "{operations} operations: {summary}"
    );
}
