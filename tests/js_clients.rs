//! JavaScript clients against a running chatgate: the Vercel AI SDK 7 (`streamText`/`generateText` through
//! `createOpenAI({baseURL}).chat(model)`, `openai(model)` (the Responses API) and `@ai-sdk/openai-compatible`;
//! `useChat`'s `Chat`/`DefaultChatTransport` on `?format=ai-sdk`), and a headless browser driving the web chat UI
//! and the usage dashboard. The Node packages live in `tests/js` (`npm ci` there, as `.ci/run` does, which also
//! brings the Node 22 the AI SDK 7 needs); the browser is Debian's chromium. Each test says SKIPPED when what it
//! needs is missing.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Backend, FakeOpenAi, Script, TestServer, full_stream};
use serde_json::{Value, json};

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Node and the packages of `tests/js`, or why not.
fn node_ready(package: &str) -> Result<(), String> {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node {
        return Err("node is not installed".into());
    }
    if !js_dir().join("node_modules").join(package).exists() {
        return Err(format!(
            "the npm package {package} is not installed (npm ci --prefix tests/js)"
        ));
    }
    Ok(())
}

/// Runs `node tests/js/<script>` with `env`; returns its stdout parsed as JSON, failing with its output.
async fn run_node(script: &str, env: Vec<(&'static str, String)>) -> Value {
    let path = js_dir().join(script);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(path)
            .envs(env)
            .output()
    })
    .await
    .expect("join")
    .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!(
            "node printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test]
async fn the_vercel_ai_sdk_works_unmodified() {
    if let Err(why) = node_ready("ai") {
        common::skipped(&format!("the Vercel AI SDK test: {why}"));
        return;
    }
    let delay = Duration::from_millis(2);
    let upstream = FakeOpenAi::start(vec![
        Script::stream(full_stream(&["Hel", "lo", " AI SDK"], 9, 3, delay)),
        Script::stream(full_stream(&["Again", "!"], 11, 2, delay)),
        Script::stream(full_stream(&["Chat", "ting"], 13, 2, delay)),
        Script::stream(full_stream(&["Once ", "more"], 13, 2, delay)),
        Script::stream(full_stream(&["And ", "again"], 13, 2, delay)),
        // Cancelled after its first piece.
        Script::stream(full_stream(
            &["One ", "two ", "three ", "four ", "five"],
            13,
            5,
            Duration::from_millis(300),
        )),
        // Left mid-reply and resumed by conversation.
        Script::stream(full_stream(
            &["Slow ", "and ", "steady ", "wins"],
            13,
            4,
            Duration::from_millis(200),
        )),
        // Stopped by the SDK's Chat.stop() after its first piece.
        Script::stream(full_stream(
            &["Eins ", "zwei ", "drei ", "vier ", "fünf"],
            13,
            5,
            Duration::from_millis(300),
        )),
        // Through @ai-sdk/openai-compatible.
        Script::stream(full_stream(&["Compatible ", "reply"], 11, 2, delay)),
    ])
    .await;
    let Some(server) = TestServer::start(Backend::Sqlite, Some(&upstream.url), "").await else {
        return;
    };
    let conversation = server.conversation("alice").await;
    let with_file = server.conversation("alice").await;
    let to_cancel = server.conversation("alice").await;
    let to_resume = server.conversation("alice").await;
    let to_stop = server.conversation("alice").await;
    let seen = run_node(
        "ai_sdk.mjs",
        vec![
            ("CHATGATE_URL", server.url.clone()),
            ("CHATGATE_TOKEN", server.token("alice")),
            ("CHATGATE_MODEL", "gpt".into()),
            ("CHATGATE_CONVERSATION", conversation.clone()),
            ("CHATGATE_CONVERSATION_2", with_file.clone()),
            ("CHATGATE_CONVERSATION_3", to_cancel.clone()),
            ("CHATGATE_CONVERSATION_4", to_resume.clone()),
            ("CHATGATE_CONVERSATION_5", to_stop.clone()),
        ],
    )
    .await;

    // The newest majors, on the Node they need.
    let versions = &seen["versions"];
    for (package, major) in [("ai", "7."), ("openai", "4."), ("compatible", "3.")] {
        assert!(
            versions[package]
                .as_str()
                .is_some_and(|v| v.starts_with(major)),
            "{package}: {versions}"
        );
    }
    // @ai-sdk/openai-compatible: the reply and the upstream's usage.
    let compatible = &seen["compatible"];
    assert_eq!(compatible["text"], "Compatible reply", "{compatible}");
    assert_eq!(compatible["finishReason"], "stop", "{compatible}");
    assert_eq!(compatible["usage"]["inputTokens"], 11, "{compatible}");
    assert_eq!(compatible["usage"]["outputTokens"], 2, "{compatible}");

    // streamText: the deltas as the upstream sent them, and the upstream's usage.
    assert_eq!(seen["stream"]["text"], "Hello AI SDK");
    assert_eq!(
        seen["stream"]["chunks"].as_array().map(Vec::len),
        Some(3),
        "{seen}"
    );
    assert_eq!(seen["stream"]["usage"]["inputTokens"], 9);
    assert_eq!(seen["stream"]["usage"]["outputTokens"], 3);
    // generateText: the whole reply and usage.
    assert_eq!(seen["generate"]["text"], "Again!");
    assert_eq!(seen["generate"]["finishReason"], "stop");
    assert_eq!(seen["generate"]["usage"]["totalTokens"], 13);

    // useChat's transport: one assistant message built from the UI message stream, with our usage metadata.
    let message = &seen["useChat"]["message"];
    assert_eq!(message["role"], "assistant");
    let texts: Vec<&Value> = message["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .filter(|p| p["type"] == "text")
        .collect();
    assert_eq!(texts.len(), 1, "{message}");
    assert_eq!(texts[0]["text"], "Chatting");
    assert_eq!(texts[0]["state"], "done");
    assert!(seen["useChat"]["updates"].as_u64().unwrap_or(0) >= 3);
    let metadata = &message["metadata"];
    assert_eq!(metadata["usage"]["prompt_tokens"], 13);
    assert_eq!(metadata["usage"]["completion_tokens"], 2);
    assert_eq!(metadata["conversation_id"], conversation.as_str());
    assert_eq!(metadata["finish_reason"], "stop");
    // Regenerated: a new reply, which history shows; the first stays as its sibling.
    let regenerated = &seen["useChat"]["regenerated"];
    assert_ne!(regenerated["id"], message["id"]);
    let text_of = |m: &Value| -> String {
        m["parts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["text"].as_str())
            .collect()
    };
    assert_eq!(text_of(regenerated), "Once more", "{regenerated}");
    // And regenerate() without a message id (the plain button): a new reply to the latest question.
    let plain = &seen["useChat"]["regeneratedPlain"];
    assert_eq!(text_of(plain), "And again", "{plain}");
    assert_ne!(plain["id"], regenerated["id"]);
    let history = server.history("alice", &conversation).await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["content"], "Hello from useChat");
    assert_eq!(history[1]["id"], plain["id"]);
    assert_eq!(history[1]["content"], "And again");
    let all = server
        .get_json(
            &format!("/api/v1/conversations/{conversation}/messages?order=asc&branches=all"),
            "alice",
        )
        .await;
    let replies: Vec<&Value> = all["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "assistant")
        .collect();
    assert_eq!(replies.len(), 3);
    assert!(
        replies
            .iter()
            .all(|r| r["parent_id"] == replies[0]["parent_id"])
    );
    // The message ids the AI SDK saw are the saved replies'.
    assert_eq!(replies[0]["id"], message["id"]);
    assert_eq!(replies[0]["content"], "Chatting");
    // A useChat file part: stored as the caller's upload and seen by the model.
    let file_reply = &seen["useChat"]["fileReply"];
    assert!(
        text_of(file_reply).contains("I see 1 image."),
        "{file_reply}"
    );
    let history = server.history("alice", &with_file).await;
    assert_eq!(history[0]["message_type"], "multimodal");
    assert_eq!(history[0]["content"], "What is this?");
    assert_eq!(history[0]["media"][0]["content_type"], "image/png");
    let media_url = history[0]["media"][0]["url"].as_str().expect("url");
    let served = server.get(media_url, "alice").send().await.expect("get");
    assert_eq!(served.status(), 200);
    // Cancelled while the SDK read it: the stream ended with `abort` (the SDK took it without an error), the
    // message has what was streamed, and its metadata says what was saved and billed.
    let cancelled = &seen["useChat"]["cancelled"];
    let streamed = text_of(cancelled);
    assert!(
        streamed.starts_with("One ") && !streamed.contains("five"),
        "{cancelled}"
    );
    assert_eq!(
        cancelled["metadata"]["finish_reason"], "cancelled",
        "{cancelled}"
    );
    let history = server.history("alice", &to_cancel).await;
    assert_eq!(history[1]["status"], "cancelled");
    assert_eq!(history[1]["id"], cancelled["metadata"]["message_id"]);
    assert_eq!(history[1]["content"].as_str(), Some(streamed.as_str()));
    // Resumed by conversation after the page left mid-reply: the whole reply, as saved; then nothing to resume.
    let resumed = &seen["resume"]["resumed"];
    assert_eq!(text_of(resumed), "Slow and steady wins", "{resumed}");
    assert_eq!(seen["resume"]["afterEnd"], Value::Null);
    let history = server.history("alice", &to_resume).await;
    assert_eq!(history[1]["id"], resumed["id"]);
    assert_eq!(history[1]["content"], "Slow and steady wins");
    // streamText's tool loop: the mock called the tool with its required argument, the SDK ran it and sent the
    // result back by the call's id, and the answer quotes it.
    let steps = seen["tools"]["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(steps[0]["finishReason"], "tool-calls");
    let call = &steps[0]["toolCalls"][0];
    assert_eq!(
        (&call["toolName"], &call["input"]),
        (&json!("get_weather"), &json!({"location": "mock"}))
    );
    assert_eq!(steps[0]["toolResults"][0]["toolCallId"], call["toolCallId"]);
    assert_eq!(steps[1]["finishReason"], "stop");
    let text = seen["tools"]["text"].as_str().expect("text");
    assert!(
        text.contains(r#"Your tools answered: {"location":"mock","celsius":21}"#),
        "{text}"
    );
    // The default `openai(model)` provider, on /v1/responses: whole, streamed, and a tool loop.
    let responses = &seen["responses"];
    let generated = responses["generated"]["text"].as_str().expect("text");
    assert!(generated.contains("Responses hello"), "{responses}");
    assert_eq!(responses["generated"]["finishReason"], "stop");
    assert!(responses["generated"]["usage"]["outputTokens"].as_u64() > Some(0));
    let streamed = responses["streamed"]["text"].as_str().expect("text");
    assert!(streamed.contains("Responses stream"), "{responses}");
    assert!(responses["streamed"]["usage"]["inputTokens"].as_u64() > Some(0));
    let steps = responses["tools"]["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{responses}");
    assert_eq!(steps[0]["finishReason"], "tool-calls");
    assert_eq!(
        steps[0]["toolCalls"][0]["input"],
        json!({"location": "mock"})
    );
    let text = responses["tools"]["text"].as_str().expect("text");
    assert!(
        text.contains(r#"{"location":"mock","celsius":21}"#),
        "{text}"
    );
    // Chat.stop() with `on_disconnect=cancel`: the reply stopped on the server, saved `cancelled` with what was
    // streamed (the SDK shows a prefix of it), and billed for that alone.
    let stopped = seen["stopped"]["text"].as_str().expect("text");
    assert!(stopped.starts_with("Eins"), "{}", seen["stopped"]);
    assert_eq!(seen["stopped"]["status"], "ready");
    let reply = server.wait_for_reply("alice", &to_stop).await;
    assert_eq!(reply["status"], "cancelled", "{reply}");
    let saved = reply["content"].as_str().expect("content");
    assert!(
        saved.starts_with(stopped) && saved.len() < "Eins zwei drei vier fünf".len(),
        "saved {saved:?}, shown {stopped:?}"
    );
    let records = server
        .get_json(
            &format!("/api/v1/conversations/{to_stop}/messages"),
            "alice",
        )
        .await;
    let billed = records["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["role"] == "assistant")
        .map(|m| m["tokens_used"].as_u64().unwrap_or(0));
    assert!(billed.is_some_and(|t| t > 0), "{records}");
    // Usage for all sixteen, per user.
    let usage: Value = server.get_json("/api/v1/usage", "alice").await;
    assert_eq!(usage["totals"]["requests"], 16, "{usage}");
}

/// The browser binary: `$CHROMIUM`, else Debian's.
fn chromium() -> Option<PathBuf> {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/bin/chromium")))
        .filter(|p| p.exists())
}

/// The mock model's whole reply to `message` (it quotes the message).
fn mock_reply(message: &str) -> String {
    chatgate::providers::mock::MockProvider::reply_to(&chatgate::providers::ChatRequest {
        model: "mock-1".into(),
        messages: vec![chatgate::providers::ChatMessage::user(message.to_string())],
        max_tokens: None,
        sampling: Default::default(),
        tools: Default::default(),
    })
}

#[tokio::test]
async fn the_web_ui_streams_survives_a_reload_stops_and_shows_usage() {
    if let Err(why) = node_ready("playwright-core") {
        common::skipped(&format!("the browser test: {why}"));
        return;
    }
    let Some(browser) = chromium() else {
        common::skipped("the browser test: chromium is not installed (apt-get install chromium)");
        return;
    };
    let Some(db) = common::TestDb::new(Backend::Sqlite).await else {
        return;
    };
    // A mock that takes 60 ms a word, so a reply streams for over a second; dev tokens on for the sign-in.
    let toml = format!(
        "[database]\nurl = \"{}\"\n[auth]\njwt_secret = \"{}\"\n[server]\ndev_tokens = true\n\
         [providers.mock]\ndelay_ms = 60\n\
         [models.mock]\nprovider = \"mock\"\nmodel = \"mock-1\"\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n\
         [defaults]\nmodel = \"mock\"\n",
        db.url,
        common::SECRET
    );
    let config = chatgate::config::Config::from_toml(&toml).expect("config");
    let server = TestServer::start_with(config, db).await;
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("screenshots");
    std::fs::create_dir_all(&screenshots).expect("screenshot dir");

    let seen = run_node(
        "browser.mjs",
        vec![
            ("CHATGATE_URL", server.url.clone()),
            ("CHROMIUM", browser.display().to_string()),
            ("SCREENSHOTS", screenshots.display().to_string()),
        ],
    )
    .await;
    assert_eq!(seen["pageErrors"], serde_json::json!([]), "{seen}");

    // On a laptop (1280×800, where the replies below stream in): the input, Send and the sidebar on screen.
    let desktop = &seen["desktop"];
    for key in ["input", "send", "sidebar"] {
        assert_eq!(desktop[key], true, "{key}: {desktop}");
    }
    // The first screen welcomes, offering the personas; the open conversation then shows its persona, and the
    // persona box follows it.
    let welcome = &seen["welcome"];
    assert_eq!(welcome["shown"], true, "{welcome}");
    assert_eq!(welcome["head"], false, "{welcome}");
    assert!(welcome["choices"].as_u64().unwrap_or(0) >= 1, "{welcome}");
    assert!(
        welcome["heading"]
            .as_str()
            .is_some_and(|h| h.starts_with("Say hello to ")),
        "{welcome}"
    );
    let head = &seen["head"];
    assert_eq!(
        (&head["shown"], &head["welcome"]),
        (&serde_json::json!(true), &serde_json::json!(false)),
        "{head}"
    );
    let persona = head["name"].as_str().expect("persona name");
    assert!(
        !persona.is_empty()
            && welcome["heading"]
                .as_str()
                .is_some_and(|h| h.ends_with(persona)),
        "{head}"
    );
    assert!(
        head["selected"]
            .as_str()
            .is_some_and(|s| s.starts_with(persona)),
        "{head}"
    );

    // On a phone: the input and Send on screen, the sidebar behind its button, a reply streamed in.
    let phone = &seen["phone"];
    for key in [
        "input",
        "send",
        "sidebarHidden",
        "toggle",
        "sidebarOpens",
        "sidebarClosesOnOpen",
    ] {
        assert_eq!(phone[key], true, "{key}: {phone}");
    }
    assert_eq!(
        phone["reply"],
        mock_reply("hello from a phone").as_str(),
        "{phone}"
    );
    assert_eq!(
        (&phone["favicon"]["status"], &phone["favicon"]["type"]),
        (&serde_json::json!(200), &serde_json::json!("image/svg+xml")),
        "{phone}"
    );

    // Tokens appeared one after another, and the reply ended whole, with its tokens and cost.
    let lengths = seen["progressive"].as_array().expect("lengths");
    assert!(lengths.len() >= 5, "the reply grew in steps: {lengths:?}");
    let first = &seen["first"];
    assert_eq!(first["text"], mock_reply("first message").as_str());
    assert_eq!(first["status"], "complete");
    let meta = first["meta"].as_str().expect("meta");
    assert!(
        meta.contains("tokens") && meta.contains('$') && meta.contains("mock"),
        "{meta}"
    );

    // Reloaded mid-reply: the page re-attached and shows the full reply, as saved.
    let reload = &seen["reload"];
    let full = mock_reply("second message");
    let partial = reload["partial"]["text"].as_str().expect("partial");
    assert!(partial.len() < full.len(), "reloaded while streaming");
    assert_eq!(reload["final"]["id"], reload["partial"]["id"]);
    assert_eq!(reload["final"]["text"], full.as_str());
    assert_eq!(reload["final"]["status"], "complete");

    // Stopped: the reply ends cancelled, with the text streamed so far.
    let stop = &seen["stop"];
    assert_eq!(stop["final"]["status"], "cancelled", "{stop}");
    let stopped = stop["final"]["text"].as_str().expect("text");
    assert!(
        stopped.len() < mock_reply("third message").len(),
        "{stopped}"
    );
    assert!(mock_reply("third message").starts_with(stopped));

    // A photo: shown in the user's bubble, and seen by the model.
    let photo = &seen["photo"];
    assert_eq!(seen["chips"][0], "image: dot.png×");
    assert_eq!(photo["image"]["width"], 1);
    assert_eq!(photo["image"]["src"], "blob:");
    assert!(
        photo["reply"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("I see 1 image.") && t.contains("What is in this photo?")),
        "{photo}"
    );
    // A voice note from the microphone: transcribed (by the mock), and answered.
    let voice = &seen["voice"];
    assert_eq!(voice["user"]["audio"], true, "{voice}");
    let transcript = voice["user"]["text"].as_str().expect("transcript");
    assert!(
        transcript.starts_with("(voice note: ") && transcript.contains("audio/"),
        "{transcript}"
    );
    assert_eq!(voice["reply"]["status"], "complete");
    assert!(
        voice["reply"]["text"]
            .as_str()
            .is_some_and(|t| t.contains(transcript))
    );

    // What the page showed is what was saved.
    let token = server.token("browser-user");
    let conversations: Value = server
        .client
        .get(format!("{}/api/v1/conversations", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let conversation = conversations["conversations"][0]["id"]
        .as_str()
        .expect("the UI's conversation")
        .to_string();
    // Titled after the first exchange; the mock's placeholder words are not worth a title, so the question's
    // first words are used, and the page shows it.
    assert_eq!(
        conversations["conversations"][0]["title"], "first message",
        "{conversations}"
    );
    assert_eq!(seen["conversations"], serde_json::json!(["first message"]));
    let history: Value = server
        .client
        .get(format!(
            "{}/api/v1/conversations/{conversation}/messages?order=asc",
            server.url
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    let saved: Vec<(&str, &str)> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "assistant")
        .map(|m| {
            (
                m["status"].as_str().unwrap_or(""),
                m["content"].as_str().unwrap_or(""),
            )
        })
        .collect();
    // The stopped reply was copied, then regenerated: Regenerate is offered on the last reply only, and the new
    // reply replaced the stopped one on the page and in the history (which keeps it as a branch).
    assert_eq!(seen["copy"]["status"], "Copied", "{seen}");
    assert_eq!(seen["copy"]["clipboard"], stopped, "{seen}");
    assert_eq!(
        seen["regenerateShown"],
        serde_json::json!([false, false, true]),
        "{seen}"
    );
    let regenerated = &seen["regenerated"];
    assert_eq!(regenerated["oldShown"], 0, "{regenerated}");
    assert_eq!(regenerated["reply"]["status"], "complete", "{regenerated}");
    assert_eq!(
        regenerated["reply"]["text"],
        mock_reply("third message").as_str(),
        "{regenerated}"
    );
    let third = mock_reply("third message");
    assert_eq!(
        saved[..3],
        [
            ("complete", mock_reply("first message").as_str()),
            ("complete", full.as_str()),
            ("complete", third.as_str()),
        ]
    );
    let all: Value = server
        .client
        .get(format!(
            "{}/api/v1/conversations/{conversation}/messages?order=asc&branches=all",
            server.url
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    assert!(
        all["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .any(|m| m["status"] == "cancelled" && m["content"] == stopped),
        "the stopped reply is kept as a branch: {all}"
    );
    // A reply's line gives its size as its completion tokens; the prompt's are only in its tooltip.
    let first_saved = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["role"] == "assistant")
        .expect("first reply");
    let completion = first_saved["completion_tokens"]
        .as_i64()
        .expect("completion tokens");
    assert!(
        meta.starts_with(&format!("{completion} tokens")),
        "{meta} vs {first_saved}"
    );
    assert_ne!(first_saved["tokens_used"].as_i64(), Some(completion));
    assert_eq!(
        saved.len(),
        5,
        "and the photo's and the voice note's replies"
    );

    // The dashboard showed the totals and charts, then polled with ETags (304s).
    let dashboard = &seen["dashboard"];
    let tokens: u64 = dashboard["tokens"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("total tokens");
    assert!(tokens > 0, "{dashboard}");
    assert!(dashboard["bars"].as_u64().unwrap_or(0) >= 2, "{dashboard}");
    assert_eq!(dashboard["models"], serde_json::json!(["mock"]));
    // Every chart has its legend, and the cost chart draws its bars.
    for label in ["prompt tokens", "completion tokens", "cost (USD)"] {
        assert!(
            dashboard["legends"]
                .as_array()
                .is_some_and(|l| l.iter().any(|s| s == label)),
            "{label}: {dashboard}"
        );
    }
    assert!(
        dashboard["costBars"].as_u64().unwrap_or(0) >= 1,
        "{dashboard}"
    );

    // Rename, archive (then found among the archived), delete: each as the API has it.
    let manage = &seen["manage"];
    assert_eq!(
        manage["renamed"],
        serde_json::json!(["Phone chat"]),
        "{manage}"
    );
    assert_eq!(manage["afterArchive"]["welcome"], true, "{manage}");
    assert_eq!(
        manage["archived"],
        serde_json::json!(["Phone chat"]),
        "{manage}"
    );
    assert_eq!(manage["archiveLabel"], "Unarchive", "{manage}");
    assert_eq!(manage["deleted"], "Chat deleted", "{manage}");
    for archived in ["true", "false"] {
        let left: Value = server
            .client
            .get(format!(
                "{}/api/v1/conversations?archived={archived}",
                server.url
            ))
            .bearer_auth(server.token("phone-user"))
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        assert_eq!(left["conversations"], serde_json::json!([]), "{left}");
    }
    // A token the server refuses: back to sign-in with the reason, and a bad pasted token is not kept.
    let expired = &seen["expired"];
    for key in ["signIn", "pasted"] {
        assert!(
            expired[key]
                .as_str()
                .is_some_and(|t| t.contains("refused") && t.contains("Sign in again")),
            "{key}: {expired}"
        );
    }
    assert_eq!(expired["stored"], Value::Null, "{expired}");
    assert!(
        dashboard["status"]
            .as_str()
            .is_some_and(|s| s.contains("answered 304"))
    );
    for shot in ["welcome.png", "chat.png", "dashboard.png", "chat-phone.png"] {
        let bytes = std::fs::read(screenshots.join(shot)).expect("screenshot");
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} is a PNG");
    }
}
