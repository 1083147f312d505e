//! Image and voice messages over a real server: uploads (types sniffed from the bytes, per-type limits, nothing
//! left behind when refused, the owner's only), multimodal messages in each provider's exact request shape (a
//! recording upstream speaking the four wire formats), media URLs behind the SSRF guard, voice notes
//! transcribed through an OpenAI-compatible endpoint, and media going with their conversation.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use base64::Engine;
use common::{Backend, TestServer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A fixture of each allowed type: real signatures, padded past what a sniffer reads.
fn fixtures() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let pad = |head: &[u8]| {
        let mut bytes = head.to_vec();
        bytes.resize(2048, 0x11);
        bytes
    };
    let mut webm = vec![
        0x1A, 0x45, 0xDF, 0xA3, 0x9F, 0x42, 0x86, 0x81, 0x01, 0x42, 0xF7, 0x81, 0x01, 0x42, 0xF2,
        0x81, 0x04, 0x42, 0xF3, 0x81, 0x08, 0x42, 0x82, 0x84,
    ];
    webm.extend_from_slice(b"webm");
    vec![
        ("photo.png", "image/png", png()),
        (
            "photo.jpg",
            "image/jpeg",
            pad(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01"),
        ),
        ("photo.webp", "image/webp", pad(b"RIFF\x24\x08\0\0WEBPVP8 ")),
        ("anim.gif", "image/gif", pad(b"GIF89a\x01\x00\x01\x00")),
        (
            "note.mp3",
            "audio/mpeg",
            pad(b"ID3\x03\x00\x00\x00\x00\x00\x0a"),
        ),
        ("note.wav", "audio/wav", wav()),
        (
            "note.ogg",
            "audio/ogg",
            pad(b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00"),
        ),
        (
            "note.m4a",
            "audio/mp4",
            pad(b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom"),
        ),
        ("note.webm", "audio/webm", pad(&webm)),
    ]
}

/// A real 1×1 PNG.
fn png() -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
        .expect("png")
}

/// A real WAV: 0.1 s of silence, 8 kHz mono 16-bit.
fn wav() -> Vec<u8> {
    let samples = 800u32;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + samples * 2).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&8000u32.to_le_bytes());
    bytes.extend_from_slice(&16000u32.to_le_bytes());
    bytes.extend_from_slice(&2u16.to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&(samples * 2).to_le_bytes());
    bytes.resize(bytes.len() + samples as usize * 2, 0);
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn media_dir() -> PathBuf {
    std::env::temp_dir().join(format!("chatgate-media-test-{}", uuid::Uuid::now_v7()))
}

/// Every file under `dir`, recursively (staging files of an unfinished upload included).
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let path = e.path();
            if path.is_dir() {
                files_in(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

async fn upload(
    server: &TestServer,
    user: &str,
    name: &str,
    claimed_type: &str,
    bytes: Vec<u8>,
) -> reqwest::Response {
    let part = reqwest::multipart::Part::bytes(bytes)
        .file_name(name.to_string())
        .mime_str(claimed_type)
        .expect("mime");
    server
        .client
        .post(format!("{}/api/v1/media", server.url))
        .bearer_auth(server.token(user))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .expect("upload")
}

async fn upload_ok(server: &TestServer, user: &str, name: &str, bytes: Vec<u8>) -> Value {
    let response = upload(server, user, name, "application/octet-stream", bytes).await;
    assert_eq!(response.status(), 201, "{name}");
    response.json().await.expect("json")
}

/// Requests seen by a [`Recorder`]: path and JSON body.
type Requests = Arc<Mutex<Vec<(String, Value)>>>;

/// An upstream that records each POST (path and JSON body, or the multipart body's size) and answers
/// with chatgate's testkit mock in the provider's own wire format.
struct Recorder {
    url: String,
    requests: Requests,
}

impl Recorder {
    async fn start() -> Self {
        let requests: Requests = Arc::default();
        async fn record(
            State(requests): State<Requests>,
            request: Request,
            next: Next,
        ) -> axum::response::Response {
            // Only requests that carry a prompt or a file: not the background provider checks.
            if request.method() != axum::http::Method::POST {
                return next.run(request).await;
            }
            let (parts, body) = request.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
            let json = serde_json::from_slice(&bytes).unwrap_or_else(
                |_| json!({ "non_json_bytes": bytes.len(), "content_type": parts.headers.get("content-type").and_then(|v| v.to_str().ok()) }),
            );
            requests
                .lock()
                .expect("lock")
                .push((parts.uri.path().to_string(), json));
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        let app = chatgate::testkit::router(chatgate::testkit::MockConfig {
            tokens: 3,
            ..Default::default()
        })
        .layer(axum::middleware::from_fn_with_state(
            requests.clone(),
            record,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, requests }
    }

    fn requests(&self) -> Vec<(String, Value)> {
        self.requests.lock().expect("lock").clone()
    }

    fn last(&self) -> (String, Value) {
        self.requests().pop().expect("a request")
    }
}

/// Config for the four providers at `upstream`, each with an image-capable model, a text-only model, and
/// uploads in `dir`.
fn providers_config(upstream: &str, dir: &Path, media_extra: &str) -> String {
    format!(
        "[providers.oai]\nkind = \"openai\"\nbase_url = \"{upstream}/v1\"\napi_key = \"sk-test\"\n\
         [providers.ant]\nkind = \"anthropic\"\nbase_url = \"{upstream}/v1\"\napi_key = \"sk-ant-test\"\n\
         [providers.gem]\nkind = \"gemini\"\nbase_url = \"{upstream}/v1beta\"\napi_key = \"g-test\"\n\
         [providers.oll]\nkind = \"ollama\"\nbase_url = \"{upstream}\"\n\
         [models.vision-openai]\nprovider = \"oai\"\nmodel = \"gpt-4o-mini\"\nmodalities = [\"text\", \"image\"]\n\
         [models.vision-anthropic]\nprovider = \"ant\"\nmodel = \"claude-sonnet-4-5\"\nmodalities = [\"text\", \"image\"]\n\
         [models.vision-gemini]\nprovider = \"gem\"\nmodel = \"gemini-2.5-flash\"\nmodalities = [\"text\", \"image\"]\n\
         [models.vision-ollama]\nprovider = \"oll\"\nmodel = \"llava\"\nmodalities = [\"text\", \"image\"]\n\
         [models.text-only]\nprovider = \"oai\"\nmodel = \"gpt-3.5-turbo\"\n\
         [models.voice-openai]\nprovider = \"oai\"\nmodel = \"gpt-4o-audio-preview\"\nmodalities = [\"text\", \"audio\"]\n\
         [models.voice-gemini]\nprovider = \"gem\"\nmodel = \"gemini-2.5-flash\"\nmodalities = [\"text\", \"image\", \"audio\"]\n\
         [media]\nstorage = \"{}\"\ntranscription_provider = \"oai\"\n{media_extra}",
        dir.display()
    )
}

/// A server whose four providers point at a new recording upstream, with uploads in a new directory.
async fn vision_server(media_extra: &str) -> Option<(Recorder, PathBuf, TestServer)> {
    let upstream = Recorder::start().await;
    let dir = media_dir();
    let server = TestServer::start(
        Backend::Sqlite,
        None,
        &providers_config(&upstream.url, &dir, media_extra),
    )
    .await?;
    Some((upstream, dir, server))
}

/// A server with the mock model and uploads in a new directory.
async fn media_server(backend: Backend) -> Option<(PathBuf, TestServer)> {
    let dir = media_dir();
    let extra = format!("[media]\nstorage = \"{}\"\n", dir.display());
    let server = TestServer::start(backend, None, &extra).await?;
    Some((dir, server))
}

/// Sends a message as `user`, expecting 200; returns the JSON answer.
async fn sent_ok(server: &TestServer, conversation: &str, user: &str, body: Value) -> Value {
    let response = server
        .send_message(conversation, user, body.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200, "{body}");
    response.json().await.expect("json")
}

backend_tests!(
    uploads_are_sniffed_stored_and_served_to_their_owner_only,
    a_conversations_media_go_with_it,
);

async fn uploads_are_sniffed_stored_and_served_to_their_owner_only(backend: Backend) {
    let Some((dir, server)) = media_server(backend).await else {
        return;
    };
    for (name, expected, bytes) in fixtures() {
        // The client's type is ignored: every file is claimed to be octet-stream.
        let body = upload_ok(&server, "alice", name, bytes.clone()).await;
        assert_eq!(body["content_type"], expected, "{name}");
        assert_eq!(body["size_bytes"], bytes.len(), "{name}");
        assert_eq!(body["sha256"], sha256_hex(&bytes), "{name}");
        let id = body["id"].as_str().expect("id");
        assert_eq!(body["url"], format!("/api/v1/media/{id}"));

        let served = server
            .get(&format!("/api/v1/media/{id}"), "alice")
            .send()
            .await
            .expect("get");
        assert_eq!(served.status(), 200);
        assert_eq!(served.headers()["content-type"], expected);
        assert_eq!(served.headers()["x-content-type-options"], "nosniff");
        assert_eq!(
            served.headers()["content-security-policy"],
            "default-src 'none'; sandbox"
        );
        let disposition = served.headers()["content-disposition"]
            .to_str()
            .expect("ascii");
        assert!(
            disposition.starts_with(&format!("inline; filename=\"{id}.")),
            "{disposition}"
        );
        let etag = served.headers()["etag"].to_str().expect("etag").to_string();
        assert_eq!(
            served.bytes().await.expect("bytes").as_ref(),
            bytes.as_slice()
        );
        let again = server
            .get(&format!("/api/v1/media/{id}"), "alice")
            .header("If-None-Match", etag)
            .send()
            .await
            .expect("get");
        assert_eq!(again.status(), 304);
        // Another user's media is not there for them.
        let theirs = server
            .get(&format!("/api/v1/media/{id}"), "mallory")
            .send()
            .await
            .expect("get");
        assert_eq!(theirs.status(), 404);
    }
    assert_eq!(files_in(&dir).len(), fixtures().len());
    let missing = server
        .get("/api/v1/media/not-an-id", "alice")
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);
    let anonymous = server
        .client
        .post(format!("{}/api/v1/media", server.url))
        .multipart(
            reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(png())),
        )
        .send()
        .await
        .expect("post");
    assert_eq!(anonymous.status(), 401);
    // Polyglots: a GIF that is also JavaScript, a PNG that is also HTML. The bytes make them images, and they
    // are served as images that can never run: sandboxed, no sources, a file name.
    let mut png_html = png();
    png_html.extend_from_slice(
        b"<html><body><script>fetch('/api/v1/conversations')</script></body></html>",
    );
    let polyglots = [
        (
            "gif.js",
            "image/gif",
            "gif",
            b"GIF89a=1;alert(document.cookie);//\x01\x00\x00\x00".to_vec(),
        ),
        ("png.html", "image/png", "png", png_html),
    ];
    for (name, expected, extension, bytes) in polyglots {
        let body = upload_ok(&server, "alice", name, bytes).await;
        assert_eq!(body["content_type"], expected, "{name}");
        let served = server
            .get(body["url"].as_str().expect("url"), "alice")
            .send()
            .await
            .expect("get");
        let headers = served.headers();
        assert_eq!(headers["content-type"], expected);
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(
            headers["content-security-policy"],
            "default-src 'none'; sandbox"
        );
        let id = body["id"].as_str().expect("id");
        assert_eq!(
            headers["content-disposition"],
            format!("inline; filename=\"{id}.{extension}\"").as_str()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn disguised_wrong_and_oversize_uploads_are_refused_leaving_nothing() {
    let dir = media_dir();
    let extra = format!(
        "[media]\nstorage = \"{}\"\nmax_image_bytes = 65536\nmax_audio_bytes = 131072\n",
        dir.display()
    );
    let Some(server) = TestServer::start(Backend::Sqlite, None, &extra).await else {
        return;
    };
    // A PDF dressed as a PNG, and plain text: the bytes decide.
    let mut pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n".to_vec();
    pdf.resize(4096, b' ');
    let response = upload(&server, "alice", "cat.png", "image/png", pdf).await;
    assert_eq!(response.status(), 415);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "unsupported_media_type");
    assert_eq!(body["details"]["detected"], "application/pdf");
    let response = upload(
        &server,
        "alice",
        "note.mp3",
        "audio/mpeg",
        b"hello, not audio".to_vec(),
    )
    .await;
    assert_eq!(response.status(), 415);
    // Empty, no `file` part, not multipart.
    let response = upload(&server, "alice", "empty.png", "image/png", Vec::new()).await;
    assert_eq!(response.status(), 400);
    let response = server
        .client
        .post(format!("{}/api/v1/media", server.url))
        .bearer_auth(server.token("alice"))
        .multipart(reqwest::multipart::Form::new().text("other", "x"))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 400);
    let response = server
        .post("/api/v1/media", "alice", json!({ "file": "x" }))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 415);

    // Over the image limit, but under the audio limit: refused while streaming, once the type is known.
    let mut big_png = png();
    big_png.resize(100_000, 0);
    let response = upload(&server, "alice", "big.png", "image/png", big_png).await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["details"]["kind"], "image");
    assert_eq!(body["details"]["limit_bytes"], 65536);
    // Over every limit: refused from its Content-Length, before the body is read.
    let mut huge = wav();
    huge.resize(400_000, 0);
    let response = upload(&server, "alice", "huge.wav", "audio/wav", huge).await;
    assert_eq!(response.status(), 413);

    // Nothing of any refused upload is in storage, nor in the database.
    assert_eq!(files_in(&dir), Vec::<PathBuf>::new());
    let keys = server.state.store.media_storage_keys().await.expect("keys");
    assert!(keys.is_empty(), "{keys:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_multimodal_message_reaches_each_provider_in_its_own_shape() {
    let Some((upstream, dir, server)) = vision_server("").await else {
        return;
    };
    let image = upload_ok(&server, "alice", "photo.png", png()).await;
    let image_id = image["id"].as_str().expect("id").to_string();
    let b64 = base64::engine::general_purpose::STANDARD.encode(png());
    let question = "What is in this picture?";

    for model in [
        "vision-openai",
        "vision-anthropic",
        "vision-gemini",
        "vision-ollama",
    ] {
        let conversation = server.conversation("alice").await;
        let response = server
            .send_message(
                &conversation,
                "alice",
                json!({ "content": question, "message_type": "multimodal", "media_ids": [image_id], "model": model }),
            )
            .send()
            .await
            .expect("send");
        assert_eq!(
            response.status(),
            200,
            "{model}: {}",
            response.text().await.unwrap_or_default()
        );
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["assistant_message"]["status"], "complete", "{model}");
        assert_eq!(body["user_message"]["message_type"], "multimodal");

        let (path, sent) = upstream.last();
        match model {
            "vision-openai" => {
                assert_eq!(path, "/v1/chat/completions");
                assert_eq!(
                    sent["messages"].as_array().and_then(|m| m.last()).cloned(),
                    Some(json!({ "role": "user", "content": [
                        { "type": "text", "text": question },
                        { "type": "image_url", "image_url": { "url": format!("data:image/png;base64,{b64}") } },
                    ] }))
                );
            }
            "vision-anthropic" => {
                assert_eq!(path, "/v1/messages");
                assert_eq!(
                    sent["messages"].as_array().and_then(|m| m.last()).cloned(),
                    Some(json!({ "role": "user", "content": [
                        { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": b64 } },
                        { "type": "text", "text": question },
                    ] }))
                );
            }
            "vision-gemini" => {
                assert_eq!(
                    path,
                    "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
                );
                assert_eq!(
                    sent["contents"].as_array().and_then(|m| m.last()).cloned(),
                    Some(json!({ "role": "user", "parts": [
                        { "text": question },
                        { "inlineData": { "mimeType": "image/png", "data": b64 } },
                    ] }))
                );
            }
            _ => {
                assert_eq!(path, "/api/chat");
                assert_eq!(
                    sent["messages"].as_array().and_then(|m| m.last()).cloned(),
                    Some(json!({ "role": "user", "content": question, "images": [b64] }))
                );
            }
        }
        // History shows the media.
        let history = server.history("alice", &conversation).await;
        assert_eq!(
            history[0]["media"],
            json!([{ "id": image_id, "url": format!("/api/v1/media/{image_id}"), "content_type": "image/png",
                     "kind": "image", "size_bytes": png().len() }])
        );
    }

    // An image-only message: no text part at all.
    let conversation = server.conversation("alice").await;
    sent_ok(
        &server,
        &conversation,
        "alice",
        json!({ "message_type": "image", "media_ids": [image_id], "model": "vision-anthropic" }),
    )
    .await;
    let (_, sent) = upstream.last();
    assert_eq!(
        sent["messages"].as_array().and_then(|m| m.last()).cloned(),
        Some(json!({ "role": "user", "content": [
            { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": b64 } },
        ] }))
    );

    // A model that cannot take images: 422 naming it, nothing sent, nothing written.
    let sent_before = upstream.requests().len();
    let conversation = server.conversation("alice").await;
    let response = server
        .send_message(
            &conversation,
            "alice",
            json!({ "content": question, "message_type": "multimodal", "media_ids": [image_id], "model": "text-only" }),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "model_cannot_take_images");
    assert_eq!(body["details"]["model"], "text-only");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("text-only"))
    );
    assert_eq!(upstream.requests().len(), sent_before);
    assert!(server.history("alice", &conversation).await.is_empty());

    // Someone else's media id is 404, and the wrong kind is 422: neither writes anything.
    let response = server
        .send_message(
            &conversation,
            "mallory",
            json!({ "content": "mine?", "message_type": "multimodal", "media_ids": [image_id], "model": "vision-openai" }),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 404);
    let theirs = server.conversation("mallory").await;
    let response = server
        .send_message(
            &theirs,
            "mallory",
            json!({ "content": "mine?", "message_type": "multimodal", "media_ids": [image_id], "model": "vision-openai" }),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.expect("json")["details"]["field"],
        "media_ids"
    );
    assert!(server.history("mallory", &theirs).await.is_empty());
    let voice = upload_ok(&server, "alice", "note.wav", wav()).await;
    let response = server
        .send_message(
            &conversation,
            "alice",
            json!({ "content": "look", "message_type": "multimodal", "media_ids": [voice["id"]], "model": "vision-openai" }),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 422);
    assert_eq!(
        response.json::<Value>().await.expect("json")["error"],
        "wrong_media_kind"
    );
    // Media on a text message, or a multimodal message without media: 400.
    for body in [
        json!({ "content": "hi", "media_ids": [image_id] }),
        json!({ "content": "hi", "message_type": "multimodal" }),
        json!({ "message_type": "audio" }),
    ] {
        let response = server
            .send_message(&conversation, "alice", body.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 400, "{body}");
    }
    assert!(server.history("alice", &conversation).await.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_audio_message_is_transcribed_stored_and_answered() {
    let upstream = Recorder::start().await;
    let dir = media_dir();
    let Some(server) = TestServer::start(
        Backend::Sqlite,
        None,
        &providers_config(
            &upstream.url,
            &dir,
            "transcription_model = \"whisper-large-v3\"\n",
        ),
    )
    .await
    else {
        return;
    };
    let voice = upload_ok(&server, "alice", "note.wav", wav()).await;
    let conversation = server.conversation("alice").await;
    let response = server
        .send_message(
            &conversation,
            "alice",
            json!({ "message_type": "audio", "media_ids": [voice["id"]], "audio_duration_seconds": 0.1,
                    "model": "vision-openai" }),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(
        response.status(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );
    let body: Value = response.json().await.expect("json");
    let transcript = format!(
        "Transcribed {} bytes of audio/wav with whisper-large-v3.",
        wav().len()
    );
    // The transcription request: multipart, to the OpenAI-compatible endpoint.
    let requests = upstream.requests();
    let (path, sent) = &requests[requests.len() - 2];
    assert_eq!(path, "/v1/audio/transcriptions");
    assert!(
        sent["content_type"]
            .as_str()
            .is_some_and(|t| t.starts_with("multipart/form-data")),
        "{sent}"
    );
    // The transcript is the message's text, stored with its media, and what the model was asked.
    let user_message = &body["user_message"];
    assert_eq!(user_message["message_type"], "audio");
    assert_eq!(user_message["content"], transcript.as_str());
    assert_eq!(user_message["media"][0]["transcript"], transcript.as_str());
    assert_eq!(user_message["media"][0]["kind"], "audio");
    assert_eq!(user_message["media"][0]["duration_seconds"], 0.1);
    let (_, asked) = upstream.last();
    assert_eq!(
        asked["messages"].as_array().and_then(|m| m.last()).cloned(),
        Some(json!({ "role": "user", "content": transcript }))
    );
    assert_eq!(body["assistant_message"]["status"], "complete");
    let history = server.history("alice", &conversation).await;
    assert_eq!(history[0]["content"], transcript.as_str());
    assert_eq!(history[0]["media"][0]["transcript"], transcript.as_str());

    // A transcription endpoint that is down: 502, and nothing is written.
    let dead = media_dir();
    let Some(broken) = TestServer::start(
        Backend::Sqlite,
        None,
        &format!(
            "[providers.dead]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"k\"\n\
             [media]\nstorage = \"{}\"\ntranscription_provider = \"dead\"\n",
            dead.display()
        ),
    )
    .await
    else {
        return;
    };
    let voice = upload_ok(&broken, "alice", "note.wav", wav()).await;
    let conversation = broken.conversation("alice").await;
    let response = broken
        .send_message(
            &conversation,
            "alice",
            json!({ "message_type": "audio", "media_ids": [voice["id"]] }),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.json::<Value>().await.expect("json")["error"],
        "transcription_failed"
    );
    assert!(broken.history("alice", &conversation).await.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dead);
}

#[tokio::test]
async fn the_mock_transcribes_deterministically() {
    let Some((dir, server)) = media_server(Backend::Sqlite).await else {
        return;
    };
    let voice = upload_ok(&server, "alice", "note.wav", wav()).await;
    let conversation = server.conversation("alice").await;
    let body = sent_ok(
        &server,
        &conversation,
        "alice",
        json!({ "message_type": "audio", "content": "listen:", "media_ids": [voice["id"]] }),
    )
    .await;
    let expected = format!(
        "(voice note: {} bytes of audio/wav, sha256 {})",
        wav().len(),
        &sha256_hex(&wav())[..12]
    );
    assert_eq!(
        body["user_message"]["content"],
        format!("listen:\n\n{expected}")
    );
    assert!(
        body["assistant_message"]["content"]
            .as_str()
            .is_some_and(|c| c.contains(&expected))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Serves `bytes` at `/file`, a redirect at `/moved`, and HTML at `/page`.
async fn file_server(bytes: Vec<u8>) -> String {
    file_server_counting(bytes).await.0
}

/// [`file_server`], with the number of requests for `/file`.
async fn file_server_counting(bytes: Vec<u8>) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::routing::get;
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new()
        .route(
            "/file",
            get(move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let bytes = bytes.clone();
                async move { bytes }
            }),
        )
        .route(
            "/moved",
            get(|| async { axum::response::Redirect::temporary("/file") }),
        )
        .route(
            "/page",
            get(|| async { axum::response::Html("<html><body>not an image</body></html>") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

#[tokio::test]
async fn media_urls_are_fetched_behind_the_ssrf_guard() {
    let upstream = Recorder::start().await;
    let files = file_server(png()).await;
    // Default: loopback and private addresses are refused.
    let guarded_dir = media_dir();
    let Some(guarded) = TestServer::start(
        Backend::Sqlite,
        None,
        &providers_config(&upstream.url, &guarded_dir, ""),
    )
    .await
    else {
        return;
    };
    let conversation = guarded.conversation("alice").await;
    for (url, code) in [
        (format!("{files}/file"), "url_not_allowed"),
        (
            "http://169.254.169.254/latest/meta-data".into(),
            "url_not_allowed",
        ),
        ("file:///etc/passwd".into(), "url_not_allowed"),
        ("ftp://example.com/cat.png".into(), "url_not_allowed"),
    ] {
        let response = guarded
            .send_message(
                &conversation,
                "alice",
                json!({ "content": "see", "message_type": "multimodal", "media_urls": [url], "model": "vision-openai" }),
            )
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 422, "{url}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], code, "{url}: {body}");
    }
    assert!(guarded.history("alice", &conversation).await.is_empty());
    assert!(files_in(&guarded_dir).is_empty());

    // Allowed by config: fetched, stored as the sender's media, sent upstream.
    let open_dir = media_dir();
    let Some(open) = TestServer::start(
        Backend::Sqlite,
        None,
        &providers_config(&upstream.url, &open_dir, "allow_private_urls = true\n"),
    )
    .await
    else {
        return;
    };
    let conversation = open.conversation("alice").await;
    let url = format!("{files}/file");
    let body = sent_ok(
        &open,
        &conversation,
        "alice",
        json!({ "content": "see", "message_type": "multimodal", "media_urls": [url], "model": "vision-ollama" }),
    )
    .await;
    let media = &body["user_message"]["media"][0];
    assert_eq!(media["source_url"], url.as_str());
    assert_eq!(media["content_type"], "image/png");
    let (_, sent) = upstream.last();
    assert_eq!(
        sent["messages"]
            .as_array()
            .and_then(|m| m.last())
            .map(|m| m["images"].clone()),
        Some(json!([
            base64::engine::general_purpose::STANDARD.encode(png())
        ]))
    );
    let stored = open
        .get(media["url"].as_str().expect("url"), "alice")
        .send()
        .await
        .expect("get");
    assert_eq!(
        stored.bytes().await.expect("bytes").as_ref(),
        png().as_slice()
    );
    // Redirects are not followed; HTML is not an image.
    for (path, status) in [("/moved", 422), ("/page", 415)] {
        let response = open
            .send_message(
                &conversation,
                "alice",
                json!({ "content": "see", "message_type": "multimodal", "media_urls": [format!("{files}{path}")], "model": "vision-openai" }),
            )
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), status, "{path}");
    }
    let _ = std::fs::remove_dir_all(&guarded_dir);
    let _ = std::fs::remove_dir_all(&open_dir);
}

async fn a_conversations_media_go_with_it(backend: Backend) {
    let Some((dir, server)) = media_server(backend).await else {
        return;
    };
    let used = upload_ok(&server, "alice", "photo.png", png()).await;
    let kept = upload_ok(&server, "alice", "note.wav", wav()).await;
    let conversation = server.conversation("alice").await;
    sent_ok(
        &server,
        &conversation,
        "alice",
        json!({ "content": "look", "message_type": "multimodal", "media_ids": [used["id"]] }),
    )
    .await;
    // The same image in a second conversation keeps it alive when the first goes.
    let shared = upload_ok(&server, "alice", "photo2.png", png()).await;
    let other = server.conversation("alice").await;
    for conversation_id in [&conversation, &other] {
        let response = server
            .send_message(
                conversation_id,
                "alice",
                json!({ "message_type": "image", "media_ids": [shared["id"]] }),
            )
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
    }
    assert_eq!(files_in(&dir).len(), 3);

    let response = server
        .delete(&format!("/api/v1/conversations/{conversation}"), "alice")
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 204);
    let status = |id: &Value| {
        let request = server.get(
            &format!("/api/v1/media/{}", id.as_str().unwrap_or("")),
            "alice",
        );
        async move { request.send().await.expect("get").status().as_u16() }
    };
    assert_eq!(
        status(&used["id"]).await,
        404,
        "its record went with the conversation"
    );
    assert_eq!(
        status(&shared["id"]).await,
        200,
        "still used by another conversation"
    );
    assert_eq!(
        status(&kept["id"]).await,
        200,
        "never sent: still the user's"
    );
    // The file goes in the background sweep; recent files without a record are left for a while.
    let swept = server
        .state
        .media
        .sweep(&*server.state.store, Duration::from_secs(3600))
        .await
        .expect("sweep");
    assert_eq!(swept, 0);
    let swept = server
        .state
        .media
        .sweep(&*server.state.store, Duration::ZERO)
        .await
        .expect("sweep");
    assert_eq!(swept, 1);
    assert_eq!(files_in(&dir).len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn earlier_images_go_with_the_history_to_models_that_take_them() {
    let Some((upstream, dir, server)) = vision_server("").await else {
        return;
    };
    let image = upload_ok(&server, "alice", "photo.png", png()).await;
    let data_url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png())
    );
    let conversation = server.conversation("alice").await;
    let send = |body: Value| {
        let request = server.send_message(&conversation, "alice", body);
        async move {
            let response = request.send().await.expect("send");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    let (status, first) = send(
        json!({ "message_type": "image", "media_ids": [image["id"]], "model": "vision-openai" }),
    )
    .await;
    assert_eq!(status, 200);

    // A follow-up question: the photo goes again, in its turn.
    let (status, _) =
        send(json!({ "content": "What colour is it?", "model": "vision-openai" })).await;
    assert_eq!(status, 200);
    let (_, sent) = upstream.last();
    let turns = sent["messages"].as_array().expect("messages");
    assert_eq!(
        turns[1],
        json!({ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": data_url } }] })
    );
    assert_eq!(turns.last().expect("last")["content"], "What colour is it?");

    // A text-only model sees that there was an image, never an empty turn.
    let (status, _) = send(json!({ "content": "And now?", "model": "text-only" })).await;
    assert_eq!(status, 200);
    let (_, sent) = upstream.last();
    assert_eq!(
        sent["messages"][1],
        json!({ "role": "user", "content": "[image]" })
    );

    // Regenerating the image question: again with its image, or 422 on a model without vision.
    let question_id = first["user_message"]["id"].as_str().expect("id");
    let response = server
        .post(
            &format!("/api/v1/messages/{question_id}/regenerate"),
            "alice",
            json!({ "model": "vision-gemini" }),
        )
        .send()
        .await
        .expect("regenerate");
    assert_eq!(response.status(), 200);
    let (_, sent) = upstream.last();
    assert_eq!(
        sent["contents"]
            .as_array()
            .and_then(|c| c.last())
            .map(|c| c["parts"].clone()),
        Some(
            json!([{ "inlineData": { "mimeType": "image/png", "data": base64::engine::general_purpose::STANDARD.encode(png()) } }])
        )
    );
    let response = server
        .post(
            &format!("/api/v1/messages/{question_id}/regenerate"),
            "alice",
            json!({ "model": "text-only" }),
        )
        .send()
        .await
        .expect("regenerate");
    assert_eq!(response.status(), 422);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_openai_endpoint_takes_image_parts() {
    let Some((upstream, dir, server)) = vision_server("").await else {
        return;
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(png());
    let completion = |model: &str, url: String| {
        let request = server
            .client
            .post(format!("{}/v1/chat/completions", server.url))
            .bearer_auth(server.token("alice"))
            .json(
                &json!({ "model": model, "messages": [{ "role": "user", "content": [
                { "type": "text", "text": "Describe" },
                { "type": "image_url", "image_url": { "url": url, "detail": "auto" } },
            ] }] }),
            );
        async move {
            let response = request.send().await.expect("send");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    // To Anthropic, in its block format.
    let (status, body) =
        completion("vision-anthropic", format!("data:image/png;base64,{b64}")).await;
    assert_eq!(status, 200, "{body}");
    let (_, sent) = upstream.last();
    assert_eq!(
        sent["messages"][0]["content"],
        json!([
            { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": b64 } },
            { "type": "text", "text": "Describe" },
        ]),
        "{sent}"
    );
    // The declared type is not trusted; bad data, text-only models: OpenAI-shaped errors.
    let pdf =
        base64::engine::general_purpose::STANDARD.encode(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n");
    let (status, body) = completion("vision-openai", format!("data:image/png;base64,{pdf}")).await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, _) = completion("vision-openai", "data:image/png;base64,!!!".into()).await;
    assert_eq!(status, 400);
    let (status, body) = completion("text-only", format!("data:image/png;base64,{b64}")).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "model_cannot_take_images");
    let (status, body) = completion("vision-openai", "http://127.0.0.1:9/cat.png".into()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "url_not_allowed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn voice_notes_go_as_audio_to_models_that_hear() {
    let Some((upstream, dir, server)) = vision_server("").await else {
        return;
    };
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let fixture = |name: &str| {
        fixtures()
            .into_iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, bytes)| bytes)
            .expect("fixture")
    };
    let last_turn = |sent: &Value, key: &str| sent[key].as_array().and_then(|m| m.last()).cloned();
    let transcript = |bytes: &[u8], content_type: &str| {
        format!(
            "Transcribed {} bytes of {content_type} with whisper-1.",
            bytes.len()
        )
    };

    // WAV to an OpenAI audio model: the text sent with it and the audio, as input_audio; the transcript is stored.
    let voice = upload_ok(&server, "alice", "note.wav", wav()).await;
    let conversation = server.conversation("alice").await;
    let body = sent_ok(
        &server,
        &conversation,
        "alice",
        json!({ "message_type": "audio", "content": "listen", "media_ids": [voice["id"]], "model": "voice-openai" }),
    )
    .await;
    let (_, sent) = upstream.last();
    assert_eq!(
        last_turn(&sent, "messages"),
        Some(json!({ "role": "user", "content": [
            { "type": "text", "text": "listen" },
            { "type": "input_audio", "input_audio": { "data": b64(&wav()), "format": "wav" } },
        ] }))
    );
    assert_eq!(
        body["user_message"]["content"],
        format!("listen\n\n{}", transcript(&wav(), "audio/wav"))
    );
    assert_eq!(body["user_message"]["media"][0]["sent_as"], "audio");

    // Ogg is not a format OpenAI takes: the transcript goes instead.
    let ogg = fixture("note.ogg");
    let voice = upload_ok(&server, "alice", "note.ogg", ogg.clone()).await;
    sent_ok(
        &server,
        &conversation,
        "alice",
        json!({ "message_type": "audio", "media_ids": [voice["id"]], "model": "voice-openai" }),
    )
    .await;
    let (_, sent) = upstream.last();
    assert_eq!(
        last_turn(&sent, "messages"),
        Some(json!({ "role": "user", "content": transcript(&ogg, "audio/ogg") }))
    );

    // Gemini takes Ogg and MP3 (named audio/mp3) as inlineData.
    for (name, content_type, gemini_type) in [
        ("note.ogg", "audio/ogg", "audio/ogg"),
        ("note.mp3", "audio/mpeg", "audio/mp3"),
    ] {
        let bytes = fixture(name);
        let voice = upload_ok(&server, "alice", name, bytes.clone()).await;
        let conversation = server.conversation("alice").await;
        let body = sent_ok(
            &server,
            &conversation,
            "alice",
            json!({ "message_type": "audio", "media_ids": [voice["id"]], "model": "voice-gemini" }),
        )
        .await;
        let (_, sent) = upstream.last();
        assert_eq!(
            last_turn(&sent, "contents"),
            Some(
                json!({ "role": "user", "parts": [{ "inlineData": { "mimeType": gemini_type, "data": b64(&bytes) } }] })
            )
        );
        assert_eq!(
            body["user_message"]["content"],
            transcript(&bytes, content_type)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_request_over_budget_fetches_and_transcribes_nothing() {
    let Some((upstream, dir, server)) =
        vision_server("allow_private_urls = true\n[limits]\ndaily_token_budget = 50\n").await
    else {
        return;
    };
    let (files, hits) = file_server_counting(png()).await;
    let voice = upload_ok(&server, "alice", "note.wav", wav()).await;
    let conversation = server.conversation("alice").await;
    for body in [
        json!({ "content": "see", "message_type": "multimodal", "media_urls": [format!("{files}/file")], "model": "vision-openai" }),
        json!({ "message_type": "audio", "media_ids": [voice["id"]], "model": "vision-openai" }),
    ] {
        let response = server
            .send_message(&conversation, "alice", body.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 429, "{body}");
        assert_eq!(
            response.json::<Value>().await.expect("json")["error"],
            "budget_exceeded"
        );
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing fetched"
    );
    assert!(
        upstream.requests().is_empty(),
        "nothing transcribed or sent"
    );
    assert!(server.history("alice", &conversation).await.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_send_that_fails_after_storing_media_leaves_none_behind() {
    use base64::Engine;
    let Some((upstream, dir, server)) = vision_server("allow_private_urls = true\n").await else {
        return;
    };
    let files = file_server(png()).await;
    let conversation = server.conversation("alice").await;
    let data_url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png())
    );
    let cases = [
        // The voice note turns out to be an image: fetched and stored, then refused.
        (
            format!("/api/v1/conversations/{conversation}/messages"),
            json!({ "message_type": "audio", "audio_url": format!("{files}/file"), "model": "vision-openai" }),
            422,
            "wrong_media_kind",
        ),
        // The first image is fetched and stored, the second is a web page.
        (
            format!("/api/v1/conversations/{conversation}/messages"),
            json!({ "content": "see", "message_type": "multimodal", "model": "vision-openai",
                    "media_urls": [format!("{files}/file"), format!("{files}/page")] }),
            415,
            "unsupported_media_type",
        ),
        // useChat: the inline image is stored, then its second file is a web page.
        (
            format!("/api/v1/conversations/{conversation}/messages?format=ai-sdk"),
            json!({ "id": "chat", "trigger": "submit-message", "model": "vision-openai", "messages": [
                { "id": "m1", "role": "user", "parts": [
                    { "type": "text", "text": "what are these?" },
                    { "type": "file", "mediaType": "image/png", "url": data_url },
                    { "type": "file", "mediaType": "image/png", "url": format!("{files}/page") },
                ] },
            ] }),
            415,
            "unsupported_media_type",
        ),
    ];
    for (path, body, status, code) in cases {
        let response = server
            .post(&path, "alice", body.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["error"], code, "{body}: {error}");
        assert_eq!(
            server.state.store.media_storage_keys().await.expect("keys"),
            Vec::<String>::new(),
            "no media record is left: {body}"
        );
        assert!(files_in(&dir).is_empty(), "no file is left: {body}");
    }
    assert!(server.history("alice", &conversation).await.is_empty());
    assert!(upstream.requests().is_empty(), "nothing was sent upstream");
    let _ = std::fs::remove_dir_all(&dir);
}
