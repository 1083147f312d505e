//! Sends a message and prints the reply's tokens as they arrive over SSE; if the connection drops mid-reply,
//! re-attaches to the generation with `Last-Event-ID` and carries on where it left off.
//!
//! ```sh
//! cargo run --release                                   # the gateway, in another terminal
//! TOKEN=$(cargo run --release -q -- token --sub alice)
//! cargo run --example sse_client -- "$TOKEN" "Hello there!"
//! ```
//!
//! Optional third argument: the gateway's base URL (default `http://127.0.0.1:8000`). The example opens (or
//! reuses) a conversation with the first persona. Events are those of DESIGN.md: `user_message`, `start`,
//! `delta`, `usage`, `done` | `error`.

use std::io::Write;
use std::time::Instant;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let token = args
        .next()
        .ok_or("usage: sse_client TOKEN [MESSAGE] [BASE_URL]")?;
    let content = args
        .next()
        .unwrap_or_else(|| "Hello! Tell me about your day.".into());
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8000".into());

    let http = reqwest::Client::new();
    let personas: Value = http
        .get(format!("{base}/api/v1/personas"))
        .send()
        .await?
        .json()
        .await?;
    let persona_id = personas["personas"][0]["id"]
        .as_str()
        .ok_or("no persona")?
        .to_string();
    let conversation: Value = http
        .post(format!("{base}/api/v1/conversations"))
        .bearer_auth(&token)
        .json(&json!({ "persona_id": persona_id, "reuse_existing": true }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let conversation_id = conversation["id"].as_str().ok_or("no conversation id")?;

    let sent = Instant::now();
    let mut response = http
        .post(format!(
            "{base}/api/v1/conversations/{conversation_id}/messages"
        ))
        .bearer_auth(&token)
        .header("Accept", "text/event-stream")
        .json(&json!({ "content": content }))
        .send()
        .await?;
    if !response.status().is_success() {
        let status = response.status();
        return Err(format!("{status}: {}", response.text().await?).into());
    }
    let mut generation_id: Option<String> = None;
    let mut last_seq: Option<String> = None;
    let mut first_token = None;
    let mut out = std::io::stdout().lock();
    loop {
        let mut events = response.bytes_stream().eventsource();
        let mut finished = false;
        while let Some(event) = events.next().await {
            let Ok(event) = event else {
                break; // the connection dropped: re-attach below
            };
            if !event.id.is_empty() {
                last_seq = Some(event.id.clone());
            }
            let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            match event.event.as_str() {
                "start" => generation_id = data["generation_id"].as_str().map(str::to_string),
                "delta" => {
                    first_token.get_or_insert_with(|| sent.elapsed());
                    write!(out, "{}", data["text"].as_str().unwrap_or(""))?;
                    out.flush()?;
                }
                "done" => {
                    let usage = &data["usage"];
                    writeln!(
                        out,
                        "\n\n[{}; {} prompt + {} completion tokens{}; ${:.6}; first token after {} ms]",
                        data["finish_reason"].as_str().unwrap_or("stop"),
                        usage["prompt_tokens"],
                        usage["completion_tokens"],
                        if usage["estimated"] == true {
                            " (estimated)"
                        } else {
                            ""
                        },
                        usage["cost_usd"].as_f64().unwrap_or(0.0),
                        first_token.map_or(0, |d| d.as_millis()),
                    )?;
                    finished = true;
                }
                "error" => {
                    writeln!(out, "\n\n[error: {}]", data["message"])?;
                    finished = true;
                }
                _ => {}
            }
        }
        if finished {
            return Ok(());
        }
        // The stream ended without a terminal event: the reply runs on in the gateway; follow it from the last
        // event seen.
        let generation_id = generation_id
            .as_deref()
            .ok_or("disconnected before the reply started")?;
        eprintln!("\n[connection lost; re-attaching to {generation_id}]");
        let mut request = http
            .get(format!("{base}/api/v1/generations/{generation_id}/stream"))
            .bearer_auth(&token);
        if let Some(seq) = &last_seq {
            request = request.header("Last-Event-ID", seq);
        }
        response = request.send().await?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            eprintln!(
                "[the reply finished and left memory; read it from the conversation's history]"
            );
            return Ok(());
        }
    }
}
