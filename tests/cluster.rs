//! Two real chatgate processes sharing PostgreSQL and Redis, behind Debian's nginx (round robin, no proxy
//! buffering, WebSocket upgrade), started by each test on loopback ports: re-attach on the other instance,
//! cancel from the other instance, WebSocket subscribe across instances, SIGKILL of the owner with a follower
//! elsewhere, limits that hold once across both, and Redis killed and restarted under them.
//!
//! Needs `CHATGATE_TEST_POSTGRES_URL` and `CHATGATE_TEST_REDIS_URL` (`.ci/run` sets both), `nginx` for the
//! balancer and `redis-server` for the outage test; says SKIPPED otherwise.

#![allow(
    clippy::disallowed_methods,
    reason = "test harnesses spawn their own processes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, SseEvent, TestDb};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The owner lease the tests run with: a dead owner is noticed within about this.
const LEASE_MS: u64 = 1500;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A prompt long enough that the mock's echo streams for about three seconds (40 ms a word).
fn long_prompt() -> String {
    (1..=50)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The mock's full reply to `content` (see `MockProvider::reply_to`: it quotes 200 characters at most).
fn full_reply(content: &str) -> String {
    let content: String = content.chars().take(200).collect();
    format!(
        "Hello! I am chatgate's built-in mock model. You said: \"{content}\". Configure a provider API key to talk to a real model."
    )
}

fn token(user: &str) -> String {
    let config = chatgate::config::Config::from_toml(&format!(
        "[auth]\njwt_secret = \"{}\"\n[providers.mock]\n[models.default]\nprovider = \"mock\"\nmodel = \"mock-1\"\n",
        common::SECRET
    ))
    .expect("config");
    chatgate::auth::Authenticator::new(&config.auth)
        .mint(user, false, Duration::from_secs(600))
        .expect("token")
}

/// One chatgate process.
struct Instance {
    child: Child,
    url: String,
    port: u16,
    config_path: std::path::PathBuf,
}

impl Instance {
    fn spawn(config_path: &std::path::Path) -> Child {
        common::spawn_chatgate(config_path)
    }

    async fn wait_ready(&mut self) {
        common::wait_until_healthy(&mut self.child, &self.url).await;
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same instance again (same name, same configuration).
    async fn restart(&mut self) {
        self.child = Self::spawn(&self.config_path);
        self.wait_ready().await;
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// nginx in front of both instances.
struct Nginx {
    child: Child,
    url: String,
}

impl Drop for Nginx {
    /// Stops nginx with SIGTERM, which its master passes on to the workers before it exits; SIGKILL would end the
    /// master alone and leave the workers running, still listening on the test's port. SIGKILL only if that
    /// fails.
    fn drop(&mut self) {
        let stopped = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|status| status.success());
        if !stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn nginx_program() -> Option<&'static str> {
    ["nginx", "/usr/sbin/nginx"].into_iter().find(|program| {
        Command::new(program)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Two instances (`a`, `b`) over one fresh PostgreSQL database and one Redis key prefix, with nginx.
struct Pair {
    a: Instance,
    b: Instance,
    nginx: Nginx,
    db: TestDb,
    _dir: tempfile::TempDir,
}

impl Pair {
    /// `None` (SKIPPED said) without PostgreSQL, Redis or nginx. `redis_url` overrides the environment's;
    /// `extra` is TOML appended to each instance's configuration, `generation` lines added to its
    /// `[generation]`.
    async fn start(redis_url: Option<String>, extra: &str, generation: &str) -> Option<Self> {
        let Some(redis_url) = redis_url.or_else(|| std::env::var("CHATGATE_TEST_REDIS_URL").ok())
        else {
            common::skipped(
                "two-instance tests: set CHATGATE_TEST_REDIS_URL (and CHATGATE_TEST_POSTGRES_URL) to run them",
            );
            return None;
        };
        let Some(nginx) = nginx_program() else {
            common::skipped(
                "two-instance tests: nginx is not installed (apt-get install nginx-light)",
            );
            return None;
        };
        let db = TestDb::new(Backend::Postgres).await?;
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = format!("cgtest{}", uuid::Uuid::new_v4().simple());
        let mut instances = Vec::new();
        for name in ["a", "b"] {
            let port = free_port();
            let config = format!(
                "[server]\nbind = \"127.0.0.1:{port}\"\ninstance_id = \"{name}\"\nshutdown_grace_secs = 2\n\
                 provider_check_secs = 0\n\
                 [database]\nurl = \"{}\"\nmax_connections = 4\n\
                 [redis]\nurl = \"{redis_url}\"\nkey_prefix = \"{prefix}\"\nlease_ms = {LEASE_MS}\ncommand_timeout_ms = 500\n\
                 [auth]\njwt_secret = \"{}\"\n\
                 [generation]\ncheckpoint_interval_ms = 50\n{generation}\
                 [providers.mock]\ndelay_ms = 40\n[models.default]\nprovider = \"mock\"\nmodel = \"mock-1\"\n{extra}",
                db.url,
                common::SECRET
            );
            let config_path = dir.path().join(format!("{name}.toml"));
            std::fs::write(&config_path, config).expect("config");
            instances.push(Instance {
                child: Instance::spawn(&config_path),
                url: format!("http://127.0.0.1:{port}"),
                port,
                config_path,
            });
        }
        for instance in &mut instances {
            instance.wait_ready().await;
        }
        let b = instances.pop().expect("b");
        let a = instances.pop().expect("a");
        let nginx = start_nginx(nginx, dir.path(), &[a.port, b.port]).await;
        Some(Self {
            a,
            b,
            nginx,
            db,
            _dir: dir,
        })
    }
}

async fn start_nginx(program: &str, dir: &std::path::Path, ports: &[u16]) -> Nginx {
    let port = free_port();
    let servers: String = ports
        .iter()
        .map(|p| format!("server 127.0.0.1:{p};"))
        .collect();
    let d = dir.display();
    let config = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream chatgate {{ {servers} }}\n\
           map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://chatgate;\n\
               proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n\
               proxy_set_header Connection $connection_upgrade;\n      proxy_set_header Host $host;\n\
               proxy_buffering off;\n      proxy_cache off;\n      proxy_read_timeout 1h;\n    }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config).expect("nginx.conf");
    let child = Command::new(program)
        .args(["-p", &d.to_string(), "-c", path.to_str().expect("path")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nginx");
    let nginx = Nginx {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if reqwest::get(format!("{}/health", nginx.url))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return nginx;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "nginx did not answer: {}",
        std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
    );
}

async fn call(
    method: reqwest::Method,
    url: &str,
    user: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token(user));
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("request")
}

async fn json_ok(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// GET `url` as `user`: its JSON, asserting a 2xx.
async fn get_json(url: &str, user: &str) -> Value {
    json_ok(call(reqwest::Method::GET, url, user, None).await).await
}

async fn conversation(base: &str, user: &str) -> String {
    let personas = get_json(&format!("{base}/api/v1/personas"), user).await;
    let conversation = json_ok(
        call(
            reqwest::Method::POST,
            &format!("{base}/api/v1/conversations"),
            user,
            Some(json!({ "persona_id": personas["personas"][0]["id"] })),
        )
        .await,
    )
    .await;
    conversation["id"].as_str().expect("id").to_string()
}

/// `POST .../messages` with `body` and `Prefer: respond-async`: the answer as it comes (202, or a refusal).
async fn post_async(
    base: &str,
    user: &str,
    conversation_id: &str,
    body: Value,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!(
            "{base}/api/v1/conversations/{conversation_id}/messages"
        ))
        .bearer_auth(token(user))
        .header("prefer", "respond-async")
        .json(&body)
        .send()
        .await
        .expect("send")
}

/// Sends `body` and returns the generation id without waiting (`Prefer: respond-async`).
async fn send_body(base: &str, user: &str, conversation_id: &str, body: Value) -> String {
    json_ok(post_async(base, user, conversation_id, body).await).await["generation_id"]
        .as_str()
        .expect("generation_id")
        .to_string()
}

/// Sends `content` and returns the generation id without waiting.
async fn send_async(base: &str, user: &str, conversation_id: &str, content: &str) -> String {
    send_body(base, user, conversation_id, json!({ "content": content })).await
}

/// The SSE stream of a generation on `base`, from after `after`.
async fn follow(base: &str, user: &str, id: &str, after: u64) -> reqwest::Response {
    let response = reqwest::Client::new()
        .get(format!("{base}/api/v1/generations/{id}/stream"))
        .bearer_auth(token(user))
        .header("last-event-id", after.to_string())
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200, "stream of {id} on {base}");
    response
}

/// Every event until the terminal one (or `stop_after` deltas), with a deadline.
async fn collect(
    response: reqwest::Response,
    stop_after: Option<usize>,
    within: Duration,
) -> Vec<SseEvent> {
    let mut events = common::sse_events(response);
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    let mut deltas = 0;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline.into(), events.next()).await {
        let terminal = matches!(event.event.as_str(), "done" | "error");
        if event.event == "delta" {
            deltas += 1;
        }
        out.push(event);
        if terminal || stop_after.is_some_and(|n| deltas >= n) {
            break;
        }
    }
    out
}

fn seqs(events: &[SseEvent]) -> Vec<u64> {
    events.iter().filter_map(|e| e.id.parse().ok()).collect()
}

fn text(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "delta")
        .map(|e| e.data["text"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reattach_on_the_other_instance_is_seq_exact() {
    let Some(pair) = Pair::start(None, "", "").await else {
        return;
    };
    let (a, b) = (&pair.a.url, &pair.b.url);
    let prompt = long_prompt();
    let conversation_id = conversation(a, "alice").await;
    let id = send_async(a, "alice", &conversation_id, &prompt).await;

    // A client reads a few events on the owner, loses its connection, and its reconnect lands on the other.
    let first = collect(
        follow(a, "alice", &id, 0).await,
        Some(5),
        Duration::from_secs(10),
    )
    .await;
    let last_seen = *seqs(&first).last().expect("events on the owner");
    let rest = collect(
        follow(b, "alice", &id, last_seen).await,
        None,
        Duration::from_secs(20),
    )
    .await;
    let all: Vec<u64> = seqs(&first).into_iter().chain(seqs(&rest)).collect();
    assert_eq!(
        all,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "seq-exact across instances: no gap, no duplicate"
    );
    let done = rest.last().expect("events on the other instance");
    assert_eq!(done.event, "done", "{rest:?}");
    let streamed = format!("{}{}", text(&first), text(&rest));
    assert_eq!(streamed, full_reply(&prompt));
    assert_eq!(done.data["message"]["content"], streamed.as_str());

    // Status and a whole replay on the other instance, and through the balancer (which alternates).
    let status = get_json(&format!("{b}/api/v1/generations/{id}"), "alice").await;
    assert_eq!(status["status"], "complete");
    assert_eq!(status["text"], streamed.as_str());
    for _ in 0..2 {
        let replay = collect(
            follow(&pair.nginx.url, "alice", &id, 0).await,
            None,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(seqs(&replay), all, "a whole replay through nginx");
    }

    // Another user's id is unknown on every instance.
    for base in [a, b] {
        let answers = [
            (
                reqwest::Method::GET,
                format!("{base}/api/v1/generations/{id}/stream"),
                204,
            ),
            (
                reqwest::Method::GET,
                format!("{base}/api/v1/generations/{id}"),
                404,
            ),
            (
                reqwest::Method::POST,
                format!("{base}/api/v1/generations/{id}/cancel"),
                404,
            ),
        ];
        for (method, url, status) in answers {
            let response = call(method, &url, "mallory", None).await;
            assert_eq!(
                response.status(),
                status,
                "someone else's generation: {url}"
            );
        }
    }

    // The AI SDK's resume (by conversation) finds the reply running on the other instance, from its start.
    let conversation_id = conversation(a, "alice").await;
    let running = send_async(a, "alice", &conversation_id, &prompt).await;
    let response = reqwest::Client::new()
        .get(format!(
            "{b}/api/v1/conversations/{conversation_id}/stream?format=ai-sdk"
        ))
        .bearer_auth(token("alice"))
        .send()
        .await
        .expect("resume");
    assert_eq!(
        response.status(),
        200,
        "resume by conversation on the other instance"
    );
    let chunks: Vec<Value> = collect_raw(response).await;
    let deltas: String = chunks
        .iter()
        .filter(|c| c["type"] == "text-delta")
        .filter_map(|c| c["delta"].as_str())
        .collect();
    assert_eq!(
        deltas,
        full_reply(&prompt),
        "the whole reply, from the start"
    );
    assert_eq!(
        chunks.first().map(|c| c["type"].clone()),
        Some(json!("start"))
    );
    assert!(
        chunks
            .first()
            .is_some_and(|c| c.to_string().contains(&running)),
        "the reply's id in its start chunk: {:?}",
        chunks.first()
    );
    assert!(chunks.iter().any(|c| c["type"] == "finish"));
    // Nothing runs there any more: 204, on either instance.
    for base in [a, b] {
        let response = call(
            reqwest::Method::GET,
            &format!("{base}/api/v1/conversations/{conversation_id}/stream"),
            "alice",
            None,
        )
        .await;
        assert_eq!(response.status(), 204, "nothing running on {base}");
    }
}

/// The `data:` JSON chunks of an AI SDK UI message stream, to its end.
async fn collect_raw(response: reqwest::Response) -> Vec<Value> {
    let mut events = common::sse_events(response);
    let mut out = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(20), events.next()).await {
        if !event.data.is_null() {
            out.push(event.data);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_the_other_instance_stops_the_owner() {
    let Some(pair) = Pair::start(None, "", "").await else {
        return;
    };
    let (a, b) = (pair.a.url.clone(), pair.b.url.clone());
    let conversation_id = conversation(&a, "alice").await;
    let id = send_async(&a, "alice", &conversation_id, &long_prompt()).await;
    let owner_follower = {
        let response = follow(&a, "alice", &id, 0).await;
        tokio::spawn(async move {
            let events = collect(response, None, Duration::from_secs(20)).await;
            (events, Instant::now())
        })
    };
    let first = collect(
        follow(&b, "alice", &id, 0).await,
        Some(3),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        text(&first).split(" ").count() >= 3,
        "a few words streamed first"
    );

    let asked = Instant::now();
    let cancelled = json_ok(
        call(
            reqwest::Method::POST,
            &format!("{b}/api/v1/generations/{id}/cancel"),
            "alice",
            None,
        )
        .await,
    )
    .await;
    let answered = asked.elapsed();
    assert_eq!(cancelled["cancelled"], true, "{cancelled}");
    assert_eq!(cancelled["message"]["status"], "cancelled");
    let (events, ended_at) = owner_follower.await.expect("follower");
    let done = events.last().expect("events");
    assert_eq!(done.event, "done");
    assert_eq!(done.data["message"]["status"], "cancelled");
    let stopped = ended_at.saturating_duration_since(asked);
    eprintln!(
        "cancel on the other instance: owner's follower ended {stopped:?} after it, answered in {answered:?}"
    );
    assert!(
        stopped < Duration::from_secs(2),
        "the owner stopped in {stopped:?}"
    );
    // The saved reply is a prefix of what the mock would have said, and no more text came after the cancel.
    let saved = done.data["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        full_reply(&long_prompt()).starts_with(&saved)
            && saved.len() < full_reply(&long_prompt()).len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_subscribe_across_instances() {
    let Some(pair) = Pair::start(None, "", "").await else {
        return;
    };
    let prompt = long_prompt();
    let conversation_id = conversation(&pair.a.url, "alice").await;
    let id = send_async(&pair.a.url, "alice", &conversation_id, &prompt).await;
    for base in [&pair.b.url, &pair.nginx.url] {
        let mut request = format!("{}/api/v1/ws", base.replace("http://", "ws://"))
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", token("alice"))
                .parse()
                .expect("header"),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connect");
        socket
            .send(WsMessage::Text(
                json!({ "type": "subscribe", "id": "s", "generation_id": id })
                    .to_string()
                    .into(),
            ))
            .await
            .expect("subscribe");
        let mut frames = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let frame = tokio::time::timeout_at(deadline.into(), socket.next())
                .await
                .expect("frames in time");
            let Some(Ok(WsMessage::Text(text))) = frame else {
                continue;
            };
            let frame: Value = serde_json::from_str(&text).expect("json");
            if frame["id"] != "s" {
                continue;
            }
            let end = matches!(frame["type"].as_str(), Some("done" | "error"));
            frames.push(frame);
            if end {
                break;
            }
        }
        let seqs: Vec<u64> = frames.iter().filter_map(|f| f["seq"].as_u64()).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "on {base}"
        );
        let done = frames.last().expect("frames");
        assert_eq!(done["type"], "done", "{done}");
        assert_eq!(done["message"]["content"], full_reply(&prompt).as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_owner_ends_followers_elsewhere_billed_once_even_if_it_restarts() {
    let Some(mut pair) = Pair::start(None, "", "").await else {
        return;
    };
    let b = pair.b.url.clone();
    let conversation_id = conversation(&pair.a.url, "alice").await;
    let id = send_async(&pair.a.url, "alice", &conversation_id, &long_prompt()).await;
    let mut events = common::sse_events(follow(&b, "alice", &id, 0).await);
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        let deltas = seen
            .iter()
            .filter(|e: &&SseEvent| e.event == "delta")
            .count();
        seen.push(event);
        if deltas >= 8 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // a checkpoint or more
    pair.a.kill();
    let killed = Instant::now();
    // The instance comes back at once under the same name, and takes a new reply: its previous life's replies
    // are still closed (it is another process), and its new one is not.
    pair.a.restart().await;
    let a = pair.a.url.clone();
    let new_reply = send_async(
        &a,
        "alice",
        &conversation(&a, "alice").await,
        "after the restart",
    )
    .await;
    let deadline = killed + Duration::from_millis(LEASE_MS) + Duration::from_secs(5);
    let mut terminal = None;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline.into(), events.next()).await {
        let end = matches!(event.event.as_str(), "done" | "error");
        seen.push(event);
        if end {
            terminal = seen.last().cloned();
            break;
        }
    }
    let terminal = terminal
        .expect("the follower on the surviving instance ends within the lease plus a few seconds");
    eprintln!(
        "owner SIGKILLed: its follower elsewhere ended {:?} later",
        killed.elapsed()
    );
    assert_eq!(terminal.event, "done", "{:?}", terminal.data);
    let message = terminal.data["message"].clone();
    assert_eq!(message["status"], "interrupted");
    let saved = message["content"].as_str().unwrap_or("");
    assert!(
        !saved.is_empty() && full_reply(&long_prompt()).starts_with(saved),
        "{saved}"
    );
    assert_eq!(
        seqs(&seen),
        (1..=seen.len() as u64).collect::<Vec<_>>(),
        "seq-exact to the end"
    );

    // Billed exactly once, even after another sweep could have run.
    tokio::time::sleep(Duration::from_millis(LEASE_MS)).await;
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&pair.db.url).await.expect("db");
    let (count,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM usage_records WHERE message_id = $1")
            .bind(uuid::Uuid::parse_str(&id).expect("uuid"))
            .fetch_one(&mut conn)
            .await
            .expect("count");
    assert_eq!(count, 1, "one usage record for the interrupted reply");
    let status = get_json(&format!("{b}/api/v1/generations/{id}"), "alice").await;
    assert_eq!(status["status"], "interrupted");
    let events = collect(
        follow(&b, "alice", &new_reply, 0).await,
        None,
        Duration::from_secs(20),
    )
    .await;
    let done = events.last().expect("events");
    assert_eq!(
        done.data["message"]["status"], "complete",
        "{:?}",
        done.data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_once_across_two_instances() {
    let Some(pair) = Pair::start(
        None,
        "[limits]\nrequests_per_minute = 6\nburst = 8\nmax_concurrent_generations = 1\n\
         [ws]\nmax_connections_per_user = 2\n",
        "",
    )
    .await
    else {
        return;
    };
    // Requests alternate between the instances: a per-instance limit (8 each) would let all 12 through.
    let mut allowed = 0;
    let mut retry_after = None;
    for _ in 0..12 {
        let response = call(
            reqwest::Method::GET,
            &format!("{}/api/v1/conversations", pair.nginx.url),
            "rl",
            None,
        )
        .await;
        match response.status().as_u16() {
            200 => allowed += 1,
            429 => {
                retry_after = response.headers().get("retry-after").cloned();
                let body: Value = response.json().await.expect("json");
                assert_eq!(body["details"]["limit"], "requests_per_minute");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(allowed, 8, "the burst, once across both instances");
    assert!(retry_after.is_some(), "Retry-After on the refusal");

    // One running reply per user, whichever instance is asked (users with their own rate budget).
    let conversation_id = conversation(&pair.a.url, "carol").await;
    let first = send_async(&pair.a.url, "carol", &conversation_id, &long_prompt()).await;
    let second = post_async(
        &pair.b.url,
        "carol",
        &conversation_id,
        json!({ "content": "and another" }),
    )
    .await;
    assert_eq!(second.status(), 429);
    let body: Value = second.json().await.expect("json");
    assert_eq!(
        body["details"]["limit"], "max_concurrent_generations",
        "{body}"
    );
    // The slot comes back when the reply ends (cancelled here, from the other instance).
    json_ok(
        call(
            reqwest::Method::POST,
            &format!("{}/api/v1/generations/{first}/cancel", pair.b.url),
            "carol",
            None,
        )
        .await,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = send_async(&pair.b.url, "carol", &conversation_id, "now").await;
    assert!(!third.is_empty());

    // Two sockets per user, wherever they land; the third is closed 4429, and a closed one frees its place.
    let first_socket = open_socket(&pair.a.url, "frank").await;
    let mut second_socket = open_socket(&pair.b.url, "frank").await;
    assert_eq!(first_frame(&mut second_socket).await, Ok("ready".into()));
    let mut third_socket = open_socket(&pair.a.url, "frank").await;
    assert_eq!(first_frame(&mut third_socket).await, Err(4429));
    drop(first_socket);
    let mut admitted = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut socket = open_socket(&pair.b.url, "frank").await;
        if first_frame(&mut socket).await == Ok("ready".into()) {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "a closed socket gives its place back");
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_socket(base: &str, user: &str) -> Socket {
    let mut request = format!("{}/api/v1/ws", base.replace("http://", "ws://"))
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(user)).parse().expect("header"),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .expect("connect")
        .0
}

/// The first frame's `type`, or the close code when the socket is closed first.
async fn first_frame(socket: &mut Socket) -> Result<String, u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(WsMessage::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).expect("json");
                return Ok(frame["type"].as_str().unwrap_or("").to_string());
            }
            Some(Ok(WsMessage::Close(frame))) => {
                return Err(frame.map_or(0, |f| u16::from(f.code)));
            }
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// A redis-server of the test's own on a free port, so that it can be killed and started again.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        Self { child, port }
    }

    async fn wait(&self) {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn redis_health(base: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{base}/health"))
        .await
        .expect("health");
    let status = response.status().as_u16();
    (
        status,
        response.json::<Value>().await.expect("json")["redis"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_degrades_then_recovers() {
    if std::env::var("CHATGATE_TEST_REDIS_URL").is_err() {
        common::skipped(
            "two-instance tests: set CHATGATE_TEST_REDIS_URL (and CHATGATE_TEST_POSTGRES_URL) to run them",
        );
        return;
    }
    if Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        common::skipped("the Redis outage test: redis-server is not installed");
        return;
    }
    let port = free_port();
    let mut redis = OwnRedis::start(port);
    redis.wait().await;
    let slow = "[providers.slow]\nkind = \"mock\"\ndelay_ms = 150\n[models.slow]\nprovider = \"slow\"\nmodel = \"mock-1\"\n";
    let Some(pair) = Pair::start(Some(format!("redis://127.0.0.1:{port}/0")), slow, "").await
    else {
        return;
    };
    let (a, b) = (pair.a.url.clone(), pair.b.url.clone());
    let prompt = long_prompt();
    let conversation_id = conversation(&a, "alice").await;
    let id = send_async(&a, "alice", &conversation_id, &prompt).await;
    let owner_follower = {
        let response = follow(&a, "alice", &id, 0).await;
        tokio::spawn(collect(response, None, Duration::from_secs(30)))
    };
    // A longer reply, still running when Redis comes back empty: its shared log must be written anew.
    let long_conversation = conversation(&a, "alice").await;
    let very_long = long_prompt();
    let before = send_body(
        &a,
        "alice",
        &long_conversation,
        json!({ "content": very_long, "model": "slow" }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    redis.kill();
    // The owner's own followers keep streaming to the end; health says what is wrong, without a 503.
    let events = owner_follower.await.expect("follower");
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"));
    assert_eq!(text(&events), full_reply(&prompt));
    let (status, health) = redis_health(&a).await;
    assert_eq!(status, 200, "a Redis outage is not the instance's");
    assert_eq!(health["ok"], false, "{health}");
    // A new message is served by its own instance meanwhile (limits fall back to the instance's own).
    let started = Instant::now();
    let during = send_async(&a, "alice", &conversation_id, &prompt).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no request hangs on Redis"
    );

    // Redis comes back empty: the instances reconnect by themselves and publish what still runs again.
    redis = OwnRedis::start(port);
    redis.wait().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, health) = redis_health(&b).await;
        if health["ok"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "redis health did not recover: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut replay = None;
    for _ in 0..40 {
        let response = call(
            reqwest::Method::GET,
            &format!("{b}/api/v1/generations/{during}/stream"),
            "alice",
            None,
        )
        .await;
        if response.status() == 200 {
            replay = Some(collect(response, None, Duration::from_secs(20)).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replay = replay.expect(
        "the reply started during the outage is followed on the other instance once Redis is back",
    );
    assert_eq!(seqs(&replay), (1..=replay.len() as u64).collect::<Vec<_>>());
    assert_eq!(replay.last().map(|e| e.event.as_str()), Some("done"));
    assert_eq!(text(&replay), full_reply(&prompt));

    // The reply that started before the outage and runs on: whole and in order on the other instance.
    let response = follow(&b, "alice", &before, 0).await;
    let replay = collect(response, None, Duration::from_secs(30)).await;
    assert_eq!(seqs(&replay), (1..=replay.len() as u64).collect::<Vec<_>>());
    assert_eq!(replay.last().map(|e| e.event.as_str()), Some("done"));
    assert_eq!(text(&replay), full_reply(&very_long));
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_are_reserved_once_across_two_instances() {
    // A reply reserves its prompt plus 1,024 tokens (`reserve_output_tokens`) until its usage is saved: the
    // budget holds one such reservation, not two, and the actual usage of a finished reply leaves room again.
    let Some(pair) = Pair::start(None, "[limits]\ndaily_token_budget = 2000\n", "").await else {
        return;
    };
    let conversation_id = conversation(&pair.a.url, "dave").await;
    // The other instance has read dave's (empty) spending: without Redis it would not see the next
    // reservation for up to 30 s.
    let other_conversation = conversation(&pair.b.url, "dave").await;
    let first = send_async(&pair.a.url, "dave", &conversation_id, &long_prompt()).await;
    let refused = post_async(
        &pair.b.url,
        "dave",
        &other_conversation,
        json!({ "content": "hello" }),
    )
    .await;
    let status = refused.status();
    let body: Value = refused.json().await.expect("json");
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "budget_exceeded");
    assert_eq!(body["details"]["limit"], "daily_token_budget");
    // Once the first reply is saved, its actual usage replaces its reservation and the next one fits.
    let done = collect(
        follow(&pair.a.url, "dave", &first, 0).await,
        None,
        Duration::from_secs(20),
    )
    .await;
    let usage = &done.last().expect("done").data["usage"];
    eprintln!("first reply's usage: {usage}");
    let spent = usage["prompt_tokens"].as_u64().unwrap_or(0)
        + usage["completion_tokens"].as_u64().unwrap_or(0);
    assert!(
        spent > 0 && spent < 2000 - 1024 - 50,
        "the test's budget fits one more: {usage}"
    );
    let mut accepted = false;
    for _ in 0..20 {
        let response = post_async(
            &pair.b.url,
            "dave",
            &other_conversation,
            json!({ "content": "hello" }),
        )
        .await;
        if response.status() == 202 || response.status() == 200 {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        accepted,
        "the settled usage leaves room on the other instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_on_the_other_instance_keeps_a_reply_under_the_cancel_policy() {
    // With `disconnect_policy = "cancel"`, a reply nobody follows stops after the grace period; a follower
    // on the other instance counts as one.
    let Some(pair) = Pair::start(
        None,
        "",
        "disconnect_policy = \"cancel\"\ndisconnect_grace_ms = 300\n",
    )
    .await
    else {
        return;
    };
    let prompt = long_prompt();
    let conversation_id = conversation(&pair.a.url, "erin").await;
    let id = send_async(&pair.a.url, "erin", &conversation_id, &prompt).await;
    let elsewhere = follow(&pair.b.url, "erin", &id, 0).await;
    // A follower on the owner reads a little and leaves: the policy's grace period starts.
    collect(
        follow(&pair.a.url, "erin", &id, 0).await,
        Some(2),
        Duration::from_secs(10),
    )
    .await;
    let events = collect(elsewhere, None, Duration::from_secs(20)).await;
    let done = events.last().expect("events");
    assert_eq!(done.event, "done");
    assert_eq!(
        done.data["message"]["status"], "complete",
        "{:?}",
        done.data
    );
    assert_eq!(text(&events), full_reply(&prompt));

    // Nobody anywhere once the owner's follower left: the policy stops it.
    let id = send_async(&pair.a.url, "erin", &conversation_id, &prompt).await;
    collect(
        follow(&pair.a.url, "erin", &id, 0).await,
        Some(2),
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = get_json(&format!("{}/api/v1/generations/{id}", pair.b.url), "erin").await;
    assert_eq!(status["status"], "cancelled", "{status}");
}
