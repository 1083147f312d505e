//! Measures the media path and the AI SDK stream encoder, and prints a report.
//!
//! `cargo run --release --example media_bench [upload_mib]`
//!
//! 1. Uploads: a chatgate in this process (SQLite, uploads in a temporary directory) receives `upload_mib` MiB
//!    of WAV (default 64) through `POST /api/v1/media`, sent by a client that generates the bytes as it goes, and
//!    then serves them back with `GET /api/v1/media/{id}`. Reports throughput both ways and the process's
//!    peak resident-set growth while each runs (Linux `/proc/self/statm`, sampled every 2 ms): an upload
//!    streamed to storage grows the process by a bounded amount, far below the file's size.
//! 2. The AI SDK UI message stream encoder against the native SSE frames: ns per delta event.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatgate::event::{GenerationEvent, LoggedEvent};
use chatgate::wire::ai_sdk::Encoder;
use chatgate::wire::{openai, sse, ws};
use futures::StreamExt;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Samples the resident set every 2 ms until stopped; returns the peak.
fn watch_peak() -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let peak = Arc::new(AtomicU64::new(rss_bytes()));
    let handle = tokio::spawn(async move {
        while !flag.load(Ordering::Relaxed) {
            peak.fetch_max(rss_bytes(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        peak.load(Ordering::Relaxed)
    });
    (stop, handle)
}

fn wav_header(data_bytes: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&(36 + data_bytes).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&16000u32.to_le_bytes());
    h.extend_from_slice(&32000u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_bytes.to_le_bytes());
    h
}

const MIB: f64 = 1024.0 * 1024.0;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let upload_mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let dir = std::env::temp_dir().join(format!("chatgate-media-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let toml = format!(
        "[database]\nurl = \"sqlite://{}/bench.db?mode=rwc\"\n[auth]\njwt_secret = \"bench-secret\"\n\
         [providers.mock]\ndelay_ms = 0\n[models.mock]\nprovider = \"mock\"\nmodel = \"mock-1\"\n\
         [defaults]\nmodel = \"mock\"\n[log]\nlevel = \"warn\"\n\
         [media]\nstorage = \"{}/files\"\nmax_audio_bytes = {}\n",
        dir.display(),
        dir.display(),
        (upload_mib + 1) * 1024 * 1024
    );
    let config = chatgate::config::Config::from_toml(&toml)?;
    let state = chatgate::AppState::new(config).await?;
    let token = state.auth.mint("bench", false, Duration::from_secs(3600))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(chatgate::serve(
        state.clone(),
        listener,
        std::future::pending(),
    ));
    let client = reqwest::Client::new();

    // 1. Upload, generated on the fly by the client: 64 KiB chunks.
    let data_bytes = u32::try_from(upload_mib * 1024 * 1024 - 44)?;
    let total = u64::from(data_bytes) + 44;
    let chunk = Bytes::from(vec![0x55u8; 64 * 1024]);
    let header = Bytes::from(wav_header(data_bytes));
    let chunks = u64::from(data_bytes).div_ceil(chunk.len() as u64);
    let last = (u64::from(data_bytes) - (chunks - 1) * chunk.len() as u64) as usize;
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(header) }).chain(
        futures::stream::iter(0..chunks).map(move |i| {
            Ok::<_, std::io::Error>(if i + 1 == chunks {
                chunk.slice(..last)
            } else {
                chunk.clone()
            })
        }),
    );
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(body), total)
            .file_name("long.wav")
            .mime_str("audio/wav")?;
    let baseline = rss_bytes();
    let (stop, peak) = watch_peak();
    let started = Instant::now();
    let response = client
        .post(format!("{url}/api/v1/media"))
        .bearer_auth(&token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await?;
    let upload_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let upload_peak = peak.await?;
    let status = response.status();
    let uploaded: serde_json::Value = response.json().await?;
    if status != 201 {
        return Err(format!("upload failed: {status} {uploaded}").into());
    }
    let id = uploaded["id"].as_str().ok_or("no id")?.to_string();

    // 2. Download, read as a stream and dropped as it comes.
    let baseline_get = rss_bytes();
    let (stop, peak) = watch_peak();
    let started = Instant::now();
    let mut stream = client
        .get(format!("{url}/api/v1/media/{id}"))
        .bearer_auth(&token)
        .send()
        .await?
        .bytes_stream();
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        received += chunk?.len() as u64;
    }
    let download_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let download_peak = peak.await?;
    assert_eq!(received, total, "served whole");

    println!("# media_bench\n");
    println!("| upload {upload_mib} MiB WAV | value |\n|---|---|");
    println!(
        "| upload throughput (client → multipart → sniff → sha256 → object_store, local disk) | {:.0} MiB/s ({:.0} ms) |",
        total as f64 / MIB / upload_time.as_secs_f64(),
        upload_time.as_secs_f64() * 1000.0
    );
    println!(
        "| peak resident-set growth during the upload (client and server in one process) | {:.1} MiB |",
        upload_peak.saturating_sub(baseline) as f64 / MIB
    );
    println!(
        "| download throughput (object_store → GET /api/v1/media/{{id}}) | {:.0} MiB/s |",
        total as f64 / MIB / download_time.as_secs_f64()
    );
    println!(
        "| peak resident-set growth during the download | {:.1} MiB |",
        download_peak.saturating_sub(baseline_get) as f64 / MIB
    );

    // 3. Every wire encoder, per delta: each subscriber encodes the events it sends in its own format.
    let events: Vec<Arc<LoggedEvent>> = (1..=200_000u64)
        .map(|seq| LoggedEvent::new(seq, GenerationEvent::delta(" token")))
        .collect();
    let per_delta = |label: &str, elapsed: Duration, bytes: usize, n: usize| {
        println!(
            "| {label} | {:.0} | {:.0} |",
            elapsed.as_nanos() as f64 / n as f64,
            bytes as f64 / n as f64
        );
    };
    println!(
        "\n| stream encoding, 200,000 deltas | ns per delta | bytes per delta |\n|---|---|---|"
    );
    let started = Instant::now();
    let bytes: usize = events.iter().map(|e| sse::frame(e).len()).sum();
    per_delta("native SSE", started.elapsed(), bytes, events.len());
    let started = Instant::now();
    let bytes: usize = events
        .iter()
        .map(|e| ws::event_frame("\"r1\"", e).len())
        .sum();
    per_delta("WebSocket frame", started.elapsed(), bytes, events.len());
    let mut encoder = Encoder::default();
    let started = Instant::now();
    let bytes: usize = events
        .iter()
        .map(|e| encoder.encode(e).map_or(0, |b| b.len()))
        .sum();
    per_delta(
        "AI SDK UI message stream (`?format=ai-sdk`)",
        started.elapsed(),
        bytes,
        events.len(),
    );
    let started = Instant::now();
    let chunks = openai::chunks(
        futures::stream::iter(events.clone()),
        "chatcmpl-1".into(),
        0,
        "mock".into(),
        false,
    );
    let bytes: usize = futures::executor::block_on(chunks.map(|b| b.len()).collect::<Vec<_>>())
        .iter()
        .sum();
    per_delta(
        "OpenAI `chat.completion.chunk`",
        started.elapsed(),
        bytes,
        events.len(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
