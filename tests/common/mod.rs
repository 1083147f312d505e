//! Test harness: a real chatgate server on port 0 over a real database (a fresh SQLite file, or a fresh
//! PostgreSQL database when `CHATGATE_TEST_POSTGRES_URL` is set), and a fake OpenAI upstream — a real HTTP
//! server replaying the Chat Completions chunk format of `shared/reference/provider-streams.md`.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use chatgate::AppState;
use chatgate::config::Config;
use chatgate::store::{self, Store};
use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot};

/// Says, once per test binary and past libtest's output capture (straight to stderr), that some tests did not
/// run: a skipped test must not look like a passed one.
pub fn skipped(what: &str) {
    use std::io::Write;
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        let _ = writeln!(std::io::stderr().lock(), "SKIPPED {what}");
    });
}

/// Serves `app` on a free loopback port; its `http://127.0.0.1:PORT` URL.
pub async fn serve_app(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Whether `python3` can import `module` (`.ci/run` installs the Python clients the tests drive).
pub fn python_has(module: &str) -> bool {
    std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a Python `script` with `env` on a blocking thread; fails the test, showing its output, unless it exits
/// 0; its stdout, trimmed.
pub async fn run_python(script: &'static str, env: Vec<(&'static str, String)>) -> String {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", script])
            .envs(env)
            .output()
    })
    .await
    .expect("join")
    .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A helper server run as a child process on a free loopback port (moto's S3, LLMock), killed on drop.
pub struct ChildServer {
    /// `http://127.0.0.1:{port}`.
    pub url: String,
    child: std::process::Child,
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildServer {
    /// Whether `program --help` runs: the test says SKIPPED otherwise.
    pub fn installed(program: &str) -> bool {
        std::process::Command::new(program)
            .arg("--help")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs `program args`, each `{port}` in `args` replaced by a free port, and waits (up to 20 s) until
    /// `health_path` answers HTTP.
    pub async fn start(program: &str, args: &[&str], health_path: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
            .to_string();
        let child = std::process::Command::new(program)
            .args(args.iter().map(|a| a.replace("{port}", &port)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let server = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        for _ in 0..200 {
            if reqwest::get(format!("{}{health_path}", server.url))
                .await
                .is_ok()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{program} did not answer within 20 s");
    }
}

/// Runs the chatgate binary on `config_path` (`serve`, warnings only, output discarded).
pub fn spawn_chatgate(config_path: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .args(["--config", config_path.to_str().expect("path"), "serve"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn chatgate")
}

/// Waits (up to 20 s) until the chatgate process `child` answers `{url}/health` with 200; panics if it exits
/// first.
pub async fn wait_until_healthy(child: &mut std::process::Child, url: &str) {
    let client = reqwest::Client::new();
    for _ in 0..400 {
        if let Ok(response) = client.get(format!("{url}/health")).send().await
            && response.status() == 200
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("chatgate exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chatgate did not become ready in 20 s");
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database of the backend; `None` (with a note on stderr) when Postgres is not configured.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    drop_pg: Option<(String, String)>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}", dir.path().join("chatgate.db").display());
                Some(Self {
                    url,
                    _dir: Some(dir),
                    drop_pg: None,
                })
            }
            Backend::Postgres => {
                let Ok(admin_url) = std::env::var("CHATGATE_TEST_POSTGRES_URL") else {
                    skipped(
                        "postgres tests: set CHATGATE_TEST_POSTGRES_URL to run them on PostgreSQL",
                    );
                    return None;
                };
                let name = format!("chatgate_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = sqlx_connect(&admin_url).await;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .expect("create test database");
                let mut url =
                    reqwest::Url::parse(&admin_url).expect("CHATGATE_TEST_POSTGRES_URL is a URL");
                url.set_path(&format!("/{name}"));
                Some(Self {
                    url: url.to_string(),
                    _dir: None,
                    drop_pg: Some((admin_url, name)),
                })
            }
        }
    }

    /// A database at `url` that the test made and cleans up itself.
    pub fn at(url: String) -> Self {
        Self {
            url,
            _dir: None,
            drop_pg: None,
        }
    }

    /// The same database for a second server (another instance); the original cleans it up.
    pub fn shared(&self) -> Self {
        Self {
            url: self.url.clone(),
            _dir: None,
            drop_pg: None,
        }
    }

    pub async fn store(&self) -> Arc<dyn Store> {
        let store = store::connect(&self.url, 5).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }
}

async fn sqlx_connect(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .expect("connect to CHATGATE_TEST_POSTGRES_URL")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = self.drop_pg.take() {
            // Drop the database from a separate runtime: Drop cannot await.
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    use sqlx::Connection;
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

/// Runs a test body against SQLite and PostgreSQL: `backend_tests!(name, ...)` makes `sqlite::name` and
/// `postgres::name` from `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::common::Backend::Sqlite).await }) *
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::common::Backend::Postgres).await }) *
        }
    };
}

pub const SECRET: &str = "test-secret";

/// A running chatgate.
pub struct TestServer {
    pub url: String,
    pub state: AppState,
    pub client: reqwest::Client,
    pub db: TestDb,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts chatgate with the `mock` (zero delay) and `fake` providers (the latter at `upstream`, if any),
    /// plus `extra` TOML appended to the config. Titles are off unless `extra` has a `[titles]` table.
    pub async fn start(backend: Backend, upstream: Option<&str>, extra: &str) -> Option<Self> {
        let db = TestDb::new(backend).await?;
        let fake = upstream.map_or(String::new(), |url| {
            format!(
                "[providers.fake]\nkind = \"openai\"\nbase_url = \"{url}/v1\"\napi_key = \"sk-test-key-123\"\n\
                 first_token_timeout_ms = 5000\nidle_timeout_ms = 5000\n\
                 [models.gpt]\nprovider = \"fake\"\nmodel = \"gpt-4o-mini\"\ninput_per_mtok = 0.15\noutput_per_mtok = 0.60\n\
                 cached_input_per_mtok = 0.075\ncontext_window = 128000\n"
            )
        });
        let default_model = if upstream.is_some() { "gpt" } else { "mock" };
        // Background titles would add an upstream request and a usage record to every first exchange: off
        // unless the test configures them.
        let titles = if extra.contains("[titles]") {
            ""
        } else {
            "[titles]\nenabled = false\n"
        };
        let toml = format!(
            "[database]\nurl = \"{}\"\n[auth]\njwt_secret = \"{SECRET}\"\n[providers.mock]\ndelay_ms = 0\n\
             [models.mock]\nprovider = \"mock\"\nmodel = \"mock-1\"\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n\
             {fake}\n[defaults]\nmodel = \"{default_model}\"\n{titles}{extra}",
            db.url
        );
        let config = Config::from_toml(&toml).expect("test config");
        Some(Self::start_with(config, db).await)
    }

    /// Starts chatgate with `config`. Tests poll quickly, so the default request rate limit is off unless the
    /// config sets another value (the rate limit has its own test).
    pub async fn start_with(mut config: Config, db: TestDb) -> Self {
        // Uploads go to a directory of this server's own, not the working directory's `data/media`.
        if config.media.storage == chatgate::config::MediaConfig::default().storage {
            config.media.storage = std::env::temp_dir()
                .join(format!("chatgate-test-media-{}", uuid::Uuid::now_v7()))
                .display()
                .to_string();
        }
        if config.limits.requests_per_minute
            == chatgate::config::LimitsConfig::default().requests_per_minute
        {
            config.limits.requests_per_minute = 0;
        }
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("chatgate=debug")
                .with_test_writer()
                .try_init();
        }
        let state = AppState::new(config).await.expect("app state");
        let listener = chatgate::listen(
            "127.0.0.1:0".parse().expect("addr"),
            state.config.server.listen_backlog,
        )
        .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(chatgate::serve(state.clone(), listener, async move {
            let _ = rx.await;
        }));
        Self {
            url,
            state,
            client: reqwest::Client::new(),
            db,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// A valid token for `user`.
    pub fn token(&self, user: &str) -> String {
        self.state
            .auth
            .mint(user, false, Duration::from_secs(3600))
            .expect("mint")
    }

    pub fn admin_token(&self, user: &str) -> String {
        self.state
            .auth
            .mint(user, true, Duration::from_secs(3600))
            .expect("mint")
    }

    pub fn get(&self, path: &str, user: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.url))
            .bearer_auth(self.token(user))
    }

    /// `GET path` as `user`, expecting 200 and JSON.
    pub async fn get_json(&self, path: &str, user: &str) -> Value {
        let response = self.get(path, user).send().await.expect("get");
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("json")
    }

    pub fn post(&self, path: &str, user: &str, body: Value) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.url))
            .bearer_auth(self.token(user))
            .json(&body)
    }

    /// `POST /api/v1/conversations/{conversation_id}/messages` as `user`, ready for more headers.
    pub fn send_message(
        &self,
        conversation_id: &str,
        user: &str,
        body: Value,
    ) -> reqwest::RequestBuilder {
        self.post(
            &format!("/api/v1/conversations/{conversation_id}/messages"),
            user,
            body,
        )
    }

    pub fn patch(&self, path: &str, user: &str, body: Value) -> reqwest::RequestBuilder {
        self.client
            .patch(format!("{}{path}", self.url))
            .bearer_auth(self.token(user))
            .json(&body)
    }

    pub fn delete(&self, path: &str, user: &str) -> reqwest::RequestBuilder {
        self.client
            .delete(format!("{}{path}", self.url))
            .bearer_auth(self.token(user))
    }

    /// The id of a default persona.
    pub async fn persona_id(&self) -> String {
        let body: Value = self
            .client
            .get(format!("{}/api/v1/personas", self.url))
            .send()
            .await
            .expect("personas")
            .json()
            .await
            .expect("json");
        body["personas"][0]["id"]
            .as_str()
            .expect("a persona")
            .to_string()
    }

    /// Creates a conversation for `user`; returns its id.
    pub async fn conversation(&self, user: &str) -> String {
        let persona_id = self.persona_id().await;
        let response = self
            .post(
                "/api/v1/conversations",
                user,
                json!({ "persona_id": persona_id }),
            )
            .send()
            .await
            .expect("create");
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.expect("json");
        body["id"].as_str().expect("id").to_string()
    }

    /// The conversation's messages, oldest first.
    pub async fn history(&self, user: &str, conversation_id: &str) -> Vec<Value> {
        let response = self
            .get(
                &format!("/api/v1/conversations/{conversation_id}/messages?order=asc"),
                user,
            )
            .send()
            .await
            .expect("history");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        body["messages"].as_array().expect("messages").clone()
    }

    /// Polls history until an assistant message with a final status appears (or 10 s pass).
    pub async fn wait_for_reply(&self, user: &str, conversation_id: &str) -> Value {
        for _ in 0..200 {
            let history = self.history(user, conversation_id).await;
            if let Some(reply) = history
                .iter()
                .rev()
                .find(|m| m["role"] == "assistant" && m["status"] != "streaming")
            {
                return reply.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no assistant message was saved within 10 s");
    }

    /// Graceful shutdown; returns when the server has stopped and every write is done.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server");
        }
    }

    /// Triggers shutdown without waiting.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.take().expect("running")
    }
}

/// An SSE event as a client sees it.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: Value,
}

/// Parses an SSE response body with a real SSE parser (eventsource-stream).
pub fn sse_events(response: reqwest::Response) -> impl Stream<Item = SseEvent> + Unpin {
    Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .filter_map(|event| async move {
                let event = event.ok()?;
                Some(SseEvent {
                    id: event.id,
                    event: event.event,
                    data: serde_json::from_str(&event.data).unwrap_or(Value::Null),
                })
            }),
    )
}

/// One step of a fake upstream's answer.
#[derive(Debug, Clone)]
pub enum Step {
    /// `data: <json>\n\n`
    Chunk(Value),
    /// Raw bytes, as is (a frame that `Chunk` cannot write, such as a lone surrogate escape).
    Raw(String),
    /// Waits until the test calls [`FakeOpenAi::release`].
    Gate,
    Delay(Duration),
    /// Aborts the connection mid-body.
    Die,
    /// `data: [DONE]\n\n`
    Done,
}

/// A scripted answer: a status, headers and body for errors, or steps for a 200 stream.
#[derive(Debug, Clone)]
pub struct Script {
    pub status: u16,
    pub headers: Vec<(&'static str, &'static str)>,
    pub error_body: Value,
    pub steps: Vec<Step>,
}

impl Script {
    pub fn stream(steps: Vec<Step>) -> Self {
        Self {
            status: 200,
            headers: vec![],
            error_body: Value::Null,
            steps,
        }
    }
    pub fn error(status: u16, headers: Vec<(&'static str, &'static str)>, body: Value) -> Self {
        Self {
            status,
            headers,
            error_body: body,
            steps: vec![],
        }
    }
}

const CHUNK_ID: &str = "chatcmpl-ABfw3Oqj8RD0z6aJiiX37oTjV2HFh";

/// The first chunk: the assistant role, empty content.
pub fn role_chunk() -> Value {
    json!({"id": CHUNK_ID, "object": "chat.completion.chunk", "created": 1727346171, "model": "gpt-4o-mini-2024-07-18",
           "system_fingerprint": "fp_7568d46099", "service_tier": "default",
           "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null}, "logprobs": null, "finish_reason": null}],
           "usage": null})
}

/// A content chunk.
pub fn content_chunk(text: &str) -> Value {
    json!({"id": CHUNK_ID, "object": "chat.completion.chunk", "created": 1727346171, "model": "gpt-4o-mini-2024-07-18",
           "system_fingerprint": "fp_7568d46099",
           "choices": [{"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null}], "usage": null,
           "obfuscation": "x1"})
}

/// The chunk carrying the finish reason.
pub fn finish_chunk(reason: &str) -> Value {
    json!({"id": CHUNK_ID, "object": "chat.completion.chunk", "created": 1727346171, "model": "gpt-4o-mini-2024-07-18",
           "system_fingerprint": "fp_7568d46099",
           "choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason}], "usage": null})
}

/// The final usage chunk (`choices: []`), sent because of `stream_options.include_usage`.
pub fn usage_chunk(prompt: u64, completion: u64, cached: u64) -> Value {
    json!({"id": CHUNK_ID, "object": "chat.completion.chunk", "created": 1727346171, "model": "gpt-4o-mini-2024-07-18",
           "system_fingerprint": "fp_7568d46099", "choices": [],
           "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                     "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                     "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}})
}

/// A complete, well-formed stream of `pieces` with usage, with `delay` between chunks.
pub fn full_stream(pieces: &[&str], prompt: u64, completion: u64, delay: Duration) -> Vec<Step> {
    let mut steps = vec![Step::Chunk(role_chunk())];
    for piece in pieces {
        steps.push(Step::Delay(delay));
        steps.push(Step::Chunk(content_chunk(piece)));
    }
    steps.extend([
        Step::Chunk(finish_chunk("stop")),
        Step::Chunk(usage_chunk(prompt, completion, 0)),
        Step::Done,
    ]);
    steps
}

/// A fake OpenAI-compatible upstream serving `POST /v1/chat/completions` from a queue of scripts (the last
/// script repeats), recording every request body.
#[derive(Clone)]
pub struct FakeOpenAi {
    pub url: String,
    state: Arc<FakeState>,
}

struct FakeState {
    scripts: Mutex<VecDeque<Script>>,
    requests: Mutex<Vec<(HeaderMap, Value)>>,
    gate: Semaphore,
    finished: AtomicBool,
}

impl FakeOpenAi {
    pub async fn start(scripts: Vec<Script>) -> Self {
        let state = Arc::new(FakeState {
            scripts: Mutex::new(scripts.into()),
            requests: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
            finished: AtomicBool::new(false),
        });
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(serve_script))
            .route(
                "/v1/models",
                axum::routing::get(|| async {
                    axum::Json(json!({ "object": "list", "data": [] }))
                }),
            )
            .with_state(state.clone());
        let url = serve_app(app).await;
        Self { url, state }
    }

    /// Answers every request from now on with `script`.
    pub fn set_script(&self, script: Script) {
        *self.state.scripts.lock().expect("lock") = VecDeque::from([script]);
    }

    /// Lets a stream waiting at a [`Step::Gate`] go on.
    pub fn release(&self) {
        self.state.gate.add_permits(1);
    }

    /// True once a stream has sent `[DONE]`.
    pub fn finished(&self) -> bool {
        self.state.finished.load(Ordering::SeqCst)
    }

    /// Request bodies received so far.
    pub fn requests(&self) -> Vec<(HeaderMap, Value)> {
        self.state.requests.lock().expect("lock").clone()
    }
}

async fn serve_script(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state
        .requests
        .lock()
        .expect("lock")
        .push((headers, request));
    let script = {
        let mut scripts = state.scripts.lock().expect("lock");
        if scripts.len() > 1 {
            scripts.pop_front()
        } else {
            scripts.front().cloned()
        }
    }
    .expect("a script");
    if script.status != 200 {
        let mut response = (
            StatusCode::from_u16(script.status).expect("status"),
            axum::Json(script.error_body),
        )
            .into_response();
        for (name, value) in script.headers {
            response
                .headers_mut()
                .insert(name, value.parse().expect("header"));
        }
        return response;
    }
    let body = async_stream::stream! {
        for step in script.steps {
            match step {
                Step::Chunk(chunk) => yield Ok(Bytes::from(format!("data: {chunk}\n\n"))),
                Step::Raw(raw) => yield Ok(Bytes::from(raw)),
                Step::Gate => {
                    if let Ok(permit) = state.gate.acquire().await {
                        permit.forget();
                    }
                }
                Step::Delay(delay) => tokio::time::sleep(delay).await,
                Step::Die => {
                    yield Err(std::io::Error::other("upstream died"));
                    return;
                }
                Step::Done => {
                    state.finished.store(true, Ordering::SeqCst);
                    yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
                }
            }
        }
    };
    Response::builder()
        .header("content-type", "text/event-stream; charset=utf-8")
        .body(Body::from_stream(body))
        .expect("response")
}
