//! Measures what live generations and their subscribers cost in memory.
//!
//! `cargo run --release --example hub_memory [generations] [deltas_per_generation] [subscribers_per_generation]`
//!
//! Starts N generations in a [`Hub`], each holding D logged deltas of one short word, attaches S subscribers to
//! each (every subscriber stream polled up to the end of the log and each event encoded as an SSE frame, as a
//! connected SSE client would be), and prints the resident-set growth per generation and per subscriber
//! (Linux `/proc/self/statm`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chatgate::event::{GenerationEvent, LoggedEvent, Start};
use chatgate::store::Id;
use chatgate::stream::{Generation, GenerationMeta, Hub, MemoryLogs, UnattendedPolicy};
use chatgate::tasks::Tasks;
use chatgate::wire::sse;
use futures::{Stream, StreamExt};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

type Subscriber = Pin<Box<dyn Stream<Item = Arc<LoggedEvent>> + Send>>;

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let generations = args.first().copied().unwrap_or(10_000) as usize;
    let deltas = args.get(1).copied().unwrap_or(100) as usize;
    let subscribers = args.get(2).copied().unwrap_or(1) as usize;

    let hub = Hub::new(
        MemoryLogs::default(),
        Duration::from_secs(300),
        UnattendedPolicy::default(),
        Tasks::new(),
    );
    let release = Arc::new(tokio::sync::Notify::new());
    let before = rss_bytes();
    let mut live: Vec<Arc<Generation>> = Vec::with_capacity(generations);
    for _ in 0..generations {
        let release = Arc::clone(&release);
        let meta = GenerationMeta {
            id: Id::new(),
            user_id: "user-1".into(),
            conversation_id: Some(Id::new()),
            model: "default".into(),
        };
        let id = meta.id;
        let generation = hub
            .start(meta, move |_| async move { release.notified().await })
            .expect("hub accepts");
        generation
            .emit(GenerationEvent::Start(Box::new(Start {
                generation_id: id,
                message_id: id,
                conversation_id: generation.meta.conversation_id,
                model: "default".into(),
            })))
            .expect("log has room");
        for _ in 0..deltas {
            generation
                .emit(GenerationEvent::delta("word "))
                .expect("log has room");
        }
        live.push(generation);
    }
    let after_generations = rss_bytes();

    let mut streams: Vec<Subscriber> = Vec::with_capacity(generations * subscribers);
    for generation in &live {
        for _ in 0..subscribers {
            let mut stream: Subscriber = Box::pin(generation.subscribe(0));
            // Read the backlog, as a connected client does, then stay attached waiting for more.
            for _ in 0..=deltas {
                if let Some(event) = stream.next().await {
                    let _ = sse::frame(&event);
                }
            }
            streams.push(stream);
        }
    }
    let after_subscribers = rss_bytes();

    let per_generation = (after_generations - before) as f64 / generations as f64;
    let per_subscriber =
        (after_subscribers - after_generations) as f64 / (generations * subscribers).max(1) as f64;
    println!("generations: {generations}, deltas each: {deltas}, subscribers each: {subscribers}");
    println!("RSS before: {:.1} MiB", before as f64 / 1048576.0);
    println!(
        "per live generation (with its {deltas}-delta log): {:.0} bytes",
        per_generation
    );
    println!(
        "per log entry (approx.): {:.0} bytes",
        per_generation / (deltas + 1) as f64
    );
    println!("per attached subscriber: {:.0} bytes", per_subscriber);
    drop(streams);
    release.notify_waiters();
}
