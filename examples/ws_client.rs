//! Sends a message over chatgate's WebSocket and prints the reply's tokens as they arrive.
//!
//! ```sh
//! cargo run --release                                   # the gateway, in another terminal
//! TOKEN=$(cargo run --release -q -- token --sub alice)
//! cargo run --example ws_client -- "$TOKEN" "Hello there!"
//! ```
//!
//! Optional third argument: the gateway's base URL (default `http://127.0.0.1:8000`). The example picks the
//! first persona, opens a conversation with it, and speaks the protocol of `docs/websocket.md`.

use std::io::Write;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let token = args
        .next()
        .ok_or("usage: ws_client TOKEN [MESSAGE] [BASE_URL]")?;
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

    let url = format!("{}/api/v1/ws", base.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
    socket
        .send(Message::Text(
            json!({ "type": "auth", "token": token }).to_string().into(),
        ))
        .await?;
    socket
        .send(Message::Text(
            json!({ "type": "send", "id": "1", "conversation_id": conversation["id"], "content": content }).to_string().into(),
        ))
        .await?;
    while let Some(message) = socket.next().await {
        let Message::Text(text) = message? else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text)?;
        match frame["type"].as_str() {
            Some("delta") => {
                print!("{}", frame["text"].as_str().unwrap_or(""));
                std::io::stdout().flush()?;
            }
            Some("done") => {
                let usage = &frame["usage"];
                println!(
                    "\n[{} prompt + {} completion tokens{}, ${:.6}]",
                    usage["prompt_tokens"],
                    usage["completion_tokens"],
                    if usage["estimated"] == true {
                        ", estimated"
                    } else {
                        ""
                    },
                    usage["cost_usd"].as_f64().unwrap_or(0.0)
                );
                break;
            }
            Some("error") => {
                eprintln!("\nerror: {} {}", frame["error"], frame["message"]);
                break;
            }
            _ => {}
        }
    }
    socket.close(None).await?;
    Ok(())
}
