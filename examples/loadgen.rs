//! A load generator for streaming chat: opens N concurrent streams and measures what a chat user feels.
//!
//! ```sh
//! cargo run --release --example loadgen -- --mode native --target http://127.0.0.1:8000 --streams 1000 \
//!     --compare-direct http://127.0.0.1:9100/v1 --pid $(pgrep -f 'target/release/chatgate') --json out.json
//!
//! `--follow-on URL` sends each message to `--target` and follows its stream on another instance (Redis);
//! `--pid` takes several pids, comma-separated, and sums their RSS and CPU.
//! ```
//!
//! Modes: `native` (chatgate's SSE: `POST /api/v1/conversations/{id}/messages`), `ws` (chatgate's WebSocket),
//! `openai` (any OpenAI-compatible `POST {target}/chat/completions` with `stream: true`, e.g. the mock upstream
//! directly, or another gateway). Reports TTFT p50/p90/p99 (request sent → first delta), inter-token gap
//! p50/p99, deltas per second delivered, errors, and the target process's peak RSS and CPU time (`--pid`).
//! With `--compare-direct URL` the same load first runs in `openai` mode against URL (the upstream itself) and
//! the report adds the gateway's overhead: the difference of each percentile.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use eventsource_stream::Eventsource;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Native,
    Ws,
    Openai,
}

#[derive(Debug, Clone, Parser)]
struct Args {
    #[arg(long, value_enum, default_value = "native")]
    mode: Mode,
    /// chatgate's base URL (native, ws), or an OpenAI-compatible base URL ending in /v1 (openai).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    target: String,
    /// Concurrent streams.
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Messages each stream sends, one after the other.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// JWT secret of the gateway (native, ws): each stream is its own user.
    #[arg(long, default_value = "chatgate-dev-secret-change-me")]
    secret: String,
    /// Openai mode: the bearer token sent (another gateway's key, e.g. LiteLLM's master key). Without it each
    /// stream sends a JWT of its own user signed with `--secret`, which chatgate's `/v1` accepts and the mock
    /// ignores.
    #[arg(long)]
    api_key: Option<String>,
    /// Model alias (native, ws) or model name (openai).
    #[arg(long)]
    model: Option<String>,
    /// Processes to sample for RSS and CPU time (comma-separated: several instances are summed).
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// Native mode: send each message with `Prefer: respond-async` to `--target`, then follow its generation's
    /// stream on this base URL (another instance sharing Redis, or the same one).
    #[arg(long)]
    follow_on: Option<String>,
    /// Run the same load in openai mode against this URL first, and report the difference.
    #[arg(long)]
    compare_direct: Option<String>,
    /// Instead of `--rounds`: each stream sends messages one after the other until this many seconds have
    /// passed (a message under way is finished).
    #[arg(long)]
    duration_secs: Option<u64>,
    /// When the run's `--duration-secs` ends (set per run).
    #[arg(skip)]
    deadline: Option<Instant>,
    /// Spread the streams' starts evenly over this many ms (steady arrivals rather than one burst).
    #[arg(long, default_value_t = 0)]
    ramp_ms: u64,
    /// Native and ws modes: keep each stream's user and conversation in this file (one `token conversation`
    /// line a stream), made on the first run and reused by the next, so that runs in a row (a soak) keep
    /// growing the same conversations.
    #[arg(long)]
    sessions: Option<String>,
    /// A name for this run in the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Write the report as JSON here too.
    #[arg(long)]
    json: Option<String>,
}

/// What one run measured.
#[derive(Debug)]
struct Report {
    mode: Mode,
    streams: usize,
    /// Messages sent: streams × rounds.
    requests: u64,
    ttft: Histogram<u64>,
    gaps: Histogram<u64>,
    deltas: u64,
    errors: u64,
    wall: Duration,
    rss_start_kb: Option<u64>,
    rss_peak_kb: Option<u64>,
    /// RSS when the load ended.
    rss_end_kb: Option<u64>,
    cpu_secs: Option<f64>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Report {
    fn json(&self) -> Value {
        json!({
            "mode": format!("{:?}", self.mode).to_lowercase(),
            "streams": self.streams,
            "ttft_ms": { "p50": ms(self.ttft.value_at_quantile(0.5)), "p90": ms(self.ttft.value_at_quantile(0.9)), "p99": ms(self.ttft.value_at_quantile(0.99)) },
            "gap_ms": { "p50": ms(self.gaps.value_at_quantile(0.5)), "p99": ms(self.gaps.value_at_quantile(0.99)) },
            "requests": self.requests,
            "deltas": self.deltas,
            "deltas_per_sec": self.deltas as f64 / self.wall.as_secs_f64(),
            "errors": self.errors,
            "wall_secs": self.wall.as_secs_f64(),
            "rss_start_mb": self.rss_start_kb.map(|k| k as f64 / 1024.0),
            "rss_peak_mb": self.rss_peak_kb.map(|k| k as f64 / 1024.0),
            "rss_growth_kb_per_stream": self.rss_peak_kb.zip(self.rss_start_kb).map(|(p, s)| (p.saturating_sub(s)) as f64 / self.streams as f64),
            "rss_end_mb": self.rss_end_kb.map(|k| k as f64 / 1024.0),
            "cpu_secs": self.cpu_secs,
            // The target's CPU over the run, per delta relayed and per message: far steadier than latencies on
            // a shared machine.
            "cpu_us_per_delta": self.cpu_secs.filter(|_| self.deltas > 0).map(|c| c * 1e6 / self.deltas as f64),
            "cpu_us_per_request": self.cpu_secs.filter(|_| self.requests > 0).map(|c| c * 1e6 / self.requests as f64),
        })
    }

    fn print(&self, label: &str) {
        let j = self.json();
        println!(
            "{label:<28} {:>6} streams  TTFT p50 {:>8.2} p90 {:>8.2} p99 {:>8.2} ms  gap p50 {:>6.2} p99 {:>7.2} ms  {:>9.0} deltas/s  errors {}  RSS peak {} MB  CPU {} s",
            self.streams,
            j["ttft_ms"]["p50"].as_f64().unwrap_or(0.0),
            j["ttft_ms"]["p90"].as_f64().unwrap_or(0.0),
            j["ttft_ms"]["p99"].as_f64().unwrap_or(0.0),
            j["gap_ms"]["p50"].as_f64().unwrap_or(0.0),
            j["gap_ms"]["p99"].as_f64().unwrap_or(0.0),
            j["deltas_per_sec"].as_f64().unwrap_or(0.0),
            self.errors,
            j["rss_peak_mb"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.1}")),
            j["cpu_secs"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.2}")),
        );
    }
}

/// Per-stream timings, merged at the end.
#[derive(Default)]
struct Timings {
    ttft_us: Vec<u64>,
    gaps_us: Vec<u64>,
    deltas: u64,
    errors: u64,
    /// Messages sent.
    requests: u64,
}

/// The rounds a stream sends: `--rounds` of them, or as many as start before the `--duration-secs` deadline.
fn rounds(args: &Args) -> impl Iterator<Item = usize> + '_ {
    (0..).take_while(move |&round| match args.deadline {
        Some(deadline) => Instant::now() < deadline,
        None => round < args.rounds,
    })
}

impl Timings {
    fn delta(&mut self, sent: Instant, last: &mut Option<Instant>) {
        let now = Instant::now();
        match last {
            None => self
                .ttft_us
                .push(now.duration_since(sent).as_micros() as u64),
            Some(previous) => self
                .gaps_us
                .push(now.duration_since(*previous).as_micros() as u64),
        }
        *last = Some(now);
        self.deltas += 1;
    }
}

/// Resident set of the processes, summed, in KB.
fn rss_kb(pids: &[u32]) -> Option<u64> {
    pids.iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// User plus system CPU time of the processes, summed, in seconds.
fn cpu_secs(pids: &[u32]) -> Option<f64> {
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks: u64 =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .sum()
}

fn token(secret: &str, user: &str) -> String {
    let claims = json!({ "sub": user, "exp": jsonwebtoken::get_current_timestamp() + 24 * 3600 });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// Creates one conversation per stream (each stream is its own user); returns `(token, conversation id)`.
async fn setup(
    args: &Args,
    client: &reqwest::Client,
) -> Result<Vec<(String, String)>, Box<dyn std::error::Error>> {
    let personas: Value = client
        .get(format!("{}/api/v1/personas", args.target))
        .send()
        .await?
        .json()
        .await?;
    let persona_id = personas["personas"][0]["id"].clone();
    let results = futures::stream::iter(0..args.streams)
        .map(|i| {
            let client = client.clone();
            let token = token(&args.secret, &format!("load-{i}"));
            let url = format!("{}/api/v1/conversations", args.target);
            let persona_id = persona_id.clone();
            async move {
                let conversation: Value = client
                    .post(url)
                    .bearer_auth(&token)
                    .json(&json!({ "persona_id": persona_id }))
                    .send()
                    .await?
                    .json()
                    .await?;
                Ok::<_, reqwest::Error>((
                    token,
                    conversation["id"].as_str().unwrap_or_default().to_string(),
                ))
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    Ok(results.into_iter().collect::<Result<Vec<_>, _>>()?)
}

async fn native_stream(
    client: reqwest::Client,
    args: Arc<Args>,
    token: String,
    conversation: String,
) -> Timings {
    let mut timings = Timings::default();
    for round in rounds(&args) {
        timings.requests += 1;
        let mut body = json!({ "content": format!("Hello number {round}, tell me something.") });
        if let Some(model) = &args.model {
            body["model"] = json!(model);
        }
        let sent = Instant::now();
        let post = client
            .post(format!(
                "{}/api/v1/conversations/{conversation}/messages",
                args.target
            ))
            .bearer_auth(&token)
            .json(&body);
        let response = match &args.follow_on {
            None => post.header("accept", "text/event-stream").send().await,
            Some(follow_on) => follow_elsewhere(&client, post, follow_on, &token).await,
        };
        let Ok(response) = response.and_then(|r| r.error_for_status()) else {
            timings.errors += 1;
            continue;
        };
        let mut events = response.bytes_stream().eventsource();
        let mut last = None;
        let mut ok = false;
        while let Some(Ok(event)) = events.next().await {
            match event.event.as_str() {
                "delta" => timings.delta(sent, &mut last),
                "done" => {
                    ok = true;
                    break;
                }
                "error" => break,
                _ => {}
            }
        }
        if !ok {
            timings.errors += 1;
        }
    }
    timings
}

/// Sends with `Prefer: respond-async`, then opens the generation's stream on `follow_on`.
async fn follow_elsewhere(
    client: &reqwest::Client,
    post: reqwest::RequestBuilder,
    follow_on: &str,
    token: &str,
) -> reqwest::Result<reqwest::Response> {
    let accepted: Value = post
        .header("prefer", "respond-async")
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = accepted["generation_id"].as_str().unwrap_or_default();
    client
        .get(format!("{follow_on}/api/v1/generations/{id}/stream"))
        .bearer_auth(token)
        .send()
        .await
}

async fn ws_stream(args: Arc<Args>, token: String, conversation: String) -> Timings {
    let mut timings = Timings::default();
    let url = format!("{}/api/v1/ws", args.target.replacen("http", "ws", 1));
    let Ok(mut request) = url.into_client_request() else {
        timings.errors += 1;
        return timings;
    };
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.headers_mut().insert("authorization", value);
    }
    let Ok((mut socket, _)) = tokio_tungstenite::connect_async(request).await else {
        // Every message this stream would have sent (one, when it runs for a duration).
        timings.errors += if args.deadline.is_some() {
            1
        } else {
            args.rounds as u64
        };
        return timings;
    };
    for round in rounds(&args) {
        timings.requests += 1;
        let mut frame = json!({ "type": "send", "id": round.to_string(), "conversation_id": conversation,
                                "content": format!("Hello number {round}, tell me something.") });
        if let Some(model) = &args.model {
            frame["model"] = json!(model);
        }
        let sent = Instant::now();
        if socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .is_err()
        {
            timings.errors += 1;
            break;
        }
        let mut last = None;
        let mut ok = false;
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            // Cheap checks first: this loop runs once per token.
            if text.starts_with(r#"{"type":"delta""#) {
                timings.delta(sent, &mut last);
            } else if text.starts_with(r#"{"type":"done""#) {
                ok = true;
                break;
            } else if text.starts_with(r#"{"type":"error""#) {
                break;
            }
        }
        if !ok {
            timings.errors += 1;
        }
    }
    let _ = socket.close(None).await;
    timings
}

async fn openai_stream(
    client: reqwest::Client,
    args: Arc<Args>,
    target: String,
    bearer: String,
) -> Timings {
    let mut timings = Timings::default();
    for round in rounds(&args) {
        timings.requests += 1;
        let body = json!({
            "model": args.model.clone().unwrap_or_else(|| "mock-1".into()),
            "stream": true,
            "stream_options": { "include_usage": true },
            "messages": [{ "role": "user", "content": format!("Hello number {round}, tell me something.") }],
        });
        let sent = Instant::now();
        let response = client
            .post(format!("{target}/chat/completions"))
            .bearer_auth(&bearer)
            .json(&body)
            .send()
            .await;
        let Ok(response) = response.and_then(|r| r.error_for_status()) else {
            timings.errors += 1;
            continue;
        };
        let mut events = response.bytes_stream().eventsource();
        let mut last = None;
        let mut ok = false;
        while let Some(Ok(event)) = events.next().await {
            if event.data == "[DONE]" {
                ok = true;
                break;
            }
            if event.data.contains(r#""content":""#) && !event.data.contains(r#""content":"""#) {
                timings.delta(sent, &mut last);
            }
        }
        if !ok {
            timings.errors += 1;
        }
    }
    timings
}

async fn run(
    args: Arc<Args>,
    mode: Mode,
    target: String,
) -> Result<Report, Box<dyn std::error::Error>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .tcp_nodelay(true)
        .build()?;
    let sessions = match mode {
        Mode::Openai => (0..args.streams)
            .map(|i| {
                let bearer = (args.api_key.clone())
                    .unwrap_or_else(|| token(&args.secret, &format!("load-{i}")));
                (bearer, String::new())
            })
            .collect(),
        _ => match args.sessions.as_deref() {
            None => setup(&args, &client).await?,
            Some(path) => match std::fs::read_to_string(path) {
                Ok(saved) => {
                    let saved: Vec<(String, String)> = saved
                        .lines()
                        .filter_map(|l| l.split_once(' '))
                        .map(|(t, c)| (t.to_string(), c.to_string()))
                        .take(args.streams)
                        .collect();
                    if saved.len() < args.streams {
                        return Err(format!(
                            "{path} holds {} sessions, fewer than --streams {}",
                            saved.len(),
                            args.streams
                        )
                        .into());
                    }
                    saved
                }
                Err(_) => {
                    let sessions = setup(&args, &client).await?;
                    let lines: String =
                        sessions.iter().map(|(t, c)| format!("{t} {c}\n")).collect();
                    std::fs::write(path, lines)?;
                    sessions
                }
            },
        },
    };
    let pid = Some(args.pid.clone())
        .filter(|pids| !pids.is_empty())
        // The direct run (`--compare-direct`) measures the upstream, not the sampled gateway.
        .filter(|_| args.compare_direct.as_deref() != Some(target.as_str()));
    let rss_start_kb = pid.as_deref().and_then(rss_kb);
    let cpu_start = pid.as_deref().and_then(cpu_secs);
    let peak = Arc::new(AtomicU64::new(rss_start_kb.unwrap_or(0)));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = pid.clone().map(|pid| {
        let (peak, running) = (Arc::clone(&peak), Arc::clone(&running));
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                if let Some(rss) = rss_kb(&pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    });
    let started = Instant::now();
    let args = Arc::new(Args {
        deadline: args
            .duration_secs
            .map(|secs| started + Duration::from_secs(secs)),
        ..(*args).clone()
    });
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, (token, conversation))| {
            let (client, args, target) = (client.clone(), Arc::clone(&args), target.clone());
            let start_at = tokio::time::Instant::now()
                + Duration::from_millis(args.ramp_ms * i as u64 / args.streams.max(1) as u64);
            tokio::spawn(async move {
                tokio::time::sleep_until(start_at).await;
                match mode {
                    Mode::Native => native_stream(client, args, token, conversation).await,
                    Mode::Ws => ws_stream(args, token, conversation).await,
                    Mode::Openai => openai_stream(client, args, target, token).await,
                }
            })
        })
        .collect();
    let mut ttft = Histogram::<u64>::new(3)?;
    let mut gaps = Histogram::<u64>::new(3)?;
    let (mut deltas, mut errors, mut requests) = (0, 0, 0);
    for task in tasks {
        let timings = task.await.unwrap_or_else(|_| Timings {
            errors: 1,
            ..Timings::default()
        });
        for v in timings.ttft_us {
            ttft.record(v.max(1))?;
        }
        for v in timings.gaps_us {
            gaps.record(v.max(1))?;
        }
        deltas += timings.deltas;
        errors += timings.errors;
        requests += timings.requests;
    }
    let wall = started.elapsed();
    running.store(false, Ordering::Relaxed);
    if let Some(sampler) = sampler {
        let _ = sampler.await;
    }
    Ok(Report {
        mode,
        streams: args.streams,
        requests,
        rss_end_kb: pid.as_deref().and_then(rss_kb),
        ttft,
        gaps,
        deltas,
        errors,
        wall,
        rss_start_kb,
        rss_peak_kb: pid.as_ref().map(|_| peak.load(Ordering::Relaxed)),
        cpu_secs: pid
            .as_deref()
            .and_then(cpu_secs)
            .zip(cpu_start)
            .map(|(end, start)| end - start),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Arc::new(Args::parse());
    let label = if args.label.is_empty() {
        format!("{:?}", args.mode).to_lowercase()
    } else {
        args.label.clone()
    };
    let mut out = json!({ "label": label });
    let direct = match &args.compare_direct {
        Some(url) => {
            let report = run(Arc::clone(&args), Mode::Openai, url.clone()).await?;
            report.print("direct to upstream");
            out["direct"] = report.json();
            Some(report)
        }
        None => None,
    };
    let report = run(Arc::clone(&args), args.mode, args.target.clone()).await?;
    report.print(&label);
    out["target"] = report.json();
    if let Some(direct) = direct {
        let diff =
            |q: f64| ms(report.ttft.value_at_quantile(q)) - ms(direct.ttft.value_at_quantile(q));
        let gap_diff =
            |q: f64| ms(report.gaps.value_at_quantile(q)) - ms(direct.gaps.value_at_quantile(q));
        out["overhead_ms"] = json!({
            "ttft_p50": diff(0.5), "ttft_p90": diff(0.9), "ttft_p99": diff(0.99),
            "gap_p50": gap_diff(0.5), "gap_p99": gap_diff(0.99),
        });
        println!(
            "{:<28} TTFT p50 {:+.2} ms, p90 {:+.2} ms, p99 {:+.2} ms; gap p50 {:+.2} ms, p99 {:+.2} ms",
            "overhead (gateway − direct)",
            diff(0.5),
            diff(0.9),
            diff(0.99),
            gap_diff(0.5),
            gap_diff(0.99)
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
