//! How fast the usage queries stay with a year of history.
//!
//! `cargo run --release --example usage_at_scale [users] [DATABASE_URL]`
//!
//! Fills a fresh database (a temporary SQLite file by default, or the given URL) with a year of usage: for each
//! of `users` (default 20) one generation per hour for 365 days, spread over 4 models and 3 personas (8,760
//! usage records per user, 175,200 in all by default), written through the store as the gateway writes
//! them — each record plus its daily-rollup upsert in one transaction. Then times the dashboard queries and
//! prints SQLite's query plan for the rollup aggregate.

use std::time::Instant;

use chatgate::store::{self, Id, UsageGroup, UsageQuery, UsageRecord};
use chrono::{Duration, Utc};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let users: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let dir = tempfile_dir();
    let url = std::env::args()
        .nth(2)
        .unwrap_or_else(|| format!("sqlite://{}/usage.db", dir.display()));
    let store = store::connect(&url, 4).await?;
    store.migrate().await?;
    let mut personas = vec![None];
    for persona in chatgate::personas::defaults()
        .map_err(std::io::Error::other)?
        .iter()
        .take(2)
    {
        personas.push(Some(store.create_persona(persona).await?.id));
    }
    let models = ["fast", "smart", "cheap", "vision"];
    let start = Utc::now() - Duration::days(365);
    let fill = Instant::now();
    let mut written = 0u64;
    for user in 0..users {
        let user_id = format!("user-{user}");
        for hour in 0..365 * 24 {
            let at = start + Duration::hours(hour);
            let record = UsageRecord {
                id: Id::new(),
                user_id: user_id.clone(),
                conversation_id: None,
                message_id: None,
                persona_id: personas[hour as usize % personas.len()],
                model: models[hour as usize % models.len()].to_string(),
                upstream_model: "gpt-4o-mini".into(),
                provider: "openai".into(),
                prompt_tokens: 500 + hour % 300,
                completion_tokens: 80 + hour % 50,
                cached_tokens: 0,
                reasoning_tokens: 0,
                estimated: false,
                cost_nanousd: 120_000,
                ttft_ms: Some(300),
                duration_ms: 2_000,
                created_at: at,
            };
            store.record_usage(&record).await?;
            written += 1;
        }
    }
    println!(
        "wrote {written} usage records for {users} users in {:.1} s",
        fill.elapsed().as_secs_f64()
    );

    let user = format!("user-{}", users / 2);
    let year = UsageQuery {
        user_id: Some(user.clone()),
        from_day: (Utc::now() - Duration::days(365)).date_naive().to_string(),
        to_day: Utc::now().date_naive().to_string(),
        group_by: UsageGroup::Day,
    };
    for (label, query) in [
        ("one user, a year by day", year.clone()),
        (
            "one user, a year by model",
            UsageQuery {
                group_by: UsageGroup::Model,
                ..year.clone()
            },
        ),
        (
            "one user, 30 days by day",
            UsageQuery {
                from_day: (Utc::now() - Duration::days(29)).date_naive().to_string(),
                ..year.clone()
            },
        ),
        (
            "admin: everyone, a year by model",
            UsageQuery {
                user_id: None,
                group_by: UsageGroup::Model,
                ..year.clone()
            },
        ),
    ] {
        let runs = 20;
        let started = Instant::now();
        let mut buckets = 0;
        for _ in 0..runs {
            buckets = store.usage_buckets(&query).await?.len();
        }
        println!(
            "{label:<36} {:>8.2} ms per query ({buckets} buckets)",
            started.elapsed().as_secs_f64() * 1000.0 / runs as f64
        );
    }
    let runs = 200;
    let started = Instant::now();
    for _ in 0..runs {
        store.usage_stamp(Some(&user)).await?;
    }
    println!(
        "{:<36} {:>8.3} ms per query (the 304 path)",
        "ETag version stamp",
        started.elapsed().as_secs_f64() * 1000.0 / runs as f64
    );
    Ok(())
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("chatgate-usage-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}
