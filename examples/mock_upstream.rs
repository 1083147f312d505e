//! A mock LLM upstream for benchmarks: OpenAI, Anthropic, Gemini and Ollama streaming formats.
//!
//! ```sh
//! cargo run --release --example mock_upstream -- --bind 127.0.0.1:9100 --tokens 100 --token-delay-ms 20
//! ```
//!
//! Point a provider at it: `base_url = "http://127.0.0.1:9100/v1"` (OpenAI, Anthropic),
//! `"http://127.0.0.1:9100/v1beta"` (Gemini), `"http://127.0.0.1:9100"` (Ollama).

use std::time::Duration;

use chatgate::testkit::{MockConfig, serve};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    bind: String,
    /// Text deltas per reply.
    #[arg(long, default_value_t = 100)]
    tokens: usize,
    /// Delay before the first delta, in ms.
    #[arg(long, default_value_t = 0)]
    first_token_delay_ms: u64,
    /// Delay between deltas, in ms.
    #[arg(long, default_value_t = 0)]
    token_delay_ms: u64,
    /// Random extra delay up to this, in ms.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Fraction of requests answered 429.
    #[arg(long, default_value_t = 0.0)]
    rate_limit_rate: f64,
    /// Fraction of requests answered 500.
    #[arg(long, default_value_t = 0.0)]
    server_error_rate: f64,
    /// Fraction of streams failing halfway with an in-stream error.
    #[arg(long, default_value_t = 0.0)]
    midstream_error_rate: f64,
    /// Fraction of streams cut halfway.
    #[arg(long, default_value_t = 0.0)]
    cut_rate: f64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let config = MockConfig {
        tokens: args.tokens,
        first_token_delay: Duration::from_millis(args.first_token_delay_ms),
        token_delay: Duration::from_millis(args.token_delay_ms),
        jitter: Duration::from_millis(args.jitter_ms),
        rate_limit_rate: args.rate_limit_rate,
        server_error_rate: args.server_error_rate,
        midstream_error_rate: args.midstream_error_rate,
        cut_rate: args.cut_rate,
    };
    let listener = tokio::net::TcpListener::bind(&args.bind).await?;
    println!(
        "mock upstream on http://{} ({config:?})",
        listener.local_addr()?
    );
    serve(listener, config).await
}
