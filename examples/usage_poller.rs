//! Polls the caller's usage the way a dashboard should: with `If-None-Match`, so an unchanged answer is a
//! bodiless 304, and prints the totals whenever they change.
//!
//! ```sh
//! TOKEN=$(cargo run --release -q -- token --sub alice)
//! cargo run --example usage_poller -- "$TOKEN"            # Ctrl-C to stop
//! ```
//!
//! Optional arguments: the interval in seconds (default 5) and the base URL (default `http://127.0.0.1:8000`).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_NONE_MATCH};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let token = args
        .next()
        .ok_or("usage: usage_poller TOKEN [INTERVAL_SECS] [BASE_URL]")?;
    let interval: u64 = args.next().map_or(Ok(5), |s| s.parse())?;
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8000".into());
    let http = reqwest::Client::new();
    let mut etag: Option<String> = None;
    let (mut polls, mut unchanged) = (0u64, 0u64);
    let mut ticker = tokio::time::interval(Duration::from_secs(interval.max(1)));
    loop {
        ticker.tick().await;
        let mut request = http
            .get(format!("{base}/api/v1/usage?group_by=model"))
            .bearer_auth(&token);
        if let Some(tag) = &etag {
            request = request.header(IF_NONE_MATCH, tag);
        }
        let response = request.send().await?;
        polls += 1;
        match response.status() {
            StatusCode::NOT_MODIFIED => {
                unchanged += 1;
                continue;
            }
            status if !status.is_success() => {
                return Err(format!("{status}: {}", response.text().await?).into());
            }
            _ => {}
        }
        etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let usage: Value = response.json().await?;
        let totals = &usage["totals"];
        println!(
            "{} to {}: {} requests, {} prompt + {} completion tokens, ${:.6} ({polls} polls, {unchanged} answered 304)",
            usage["from"].as_str().unwrap_or(""),
            usage["to"].as_str().unwrap_or(""),
            totals["requests"],
            totals["prompt_tokens"],
            totals["completion_tokens"],
            totals["cost_usd"].as_f64().unwrap_or(0.0),
        );
        for bucket in usage["buckets"].as_array().into_iter().flatten() {
            println!(
                "  {:<20} {:>6} requests {:>10} tokens  ${:.6}",
                bucket["key"].as_str().unwrap_or(""),
                bucket["requests"],
                bucket["total_tokens"],
                bucket["cost_usd"].as_f64().unwrap_or(0.0),
            );
        }
    }
}
