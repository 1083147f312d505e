//! What verifying a bearer token costs per request: `Authenticator::verify` (header, key lookup by kid,
//! signature, claims, caller) for an HS256 token and for Supabase-shaped ES256, RS256 and EdDSA tokens whose key
//! set is cached, served by a JWKS endpoint on loopback. Prints µs per verification (median of 5 rounds) and the
//! fetches made (1: the one at startup).
//!
//! ```sh
//! cargo run --release --example auth_bench [-- --iterations 20000]
//! ```

#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark harness spawns its own JWKS endpoint"
)]

use std::time::Instant;

use chatgate::auth::Authenticator;
use chatgate::config::Config;
use chatgate::tasks::Tasks;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const KEYS: [(&str, Algorithm, &[u8]); 3] = [
    (
        "es-1",
        Algorithm::ES256,
        include_bytes!("../tests/fixtures/jwks/es256.pem"),
    ),
    (
        "rs-1",
        Algorithm::RS256,
        include_bytes!("../tests/fixtures/jwks/rs256.pem"),
    ),
    (
        "ed-1",
        Algorithm::EdDSA,
        include_bytes!("../tests/fixtures/jwks/ed25519.pem"),
    ),
];

fn encoding_key(algorithm: Algorithm, pem: &[u8]) -> EncodingKey {
    match algorithm {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
        _ => EncodingKey::from_ed_pem(pem),
    }
    .expect("fixture key")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let iterations: u32 = std::env::args()
        .skip_while(|a| a != "--iterations")
        .nth(1)
        .map_or(20_000, |n| n.parse().expect("--iterations N"));

    let jwks: Vec<_> = KEYS
        .iter()
        .map(|(kid, alg, pem)| {
            let mut jwk = Jwk::from_encoding_key(&encoding_key(*alg, pem), *alg).expect("jwk");
            jwk.common.key_id = Some((*kid).to_string());
            jwk
        })
        .collect();
    let body = json!({ "keys": jwks }).to_string();
    let app = axum::Router::new().route(
        "/auth/v1/.well-known/jwks.json",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let config = Config::from_toml(&format!(
        "[auth]\nsupabase_url = \"{url}\"\njwt_secret = \"bench-secret\"\n\
         [providers.mock]\n[models.default]\nprovider = \"mock\"\nmodel = \"m\""
    ))
    .expect("config");
    let auth = Authenticator::new(&config.auth);
    let tasks = Tasks::new();
    auth.start(&tasks).await;

    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({
        "iss": format!("{url}/auth/v1"), "sub": "7d3c1a52-0b8e-4c1e-9a57-2f6f1d3e8b90", "aud": "authenticated",
        "exp": now + 3600, "iat": now, "email": "user@example.com", "role": "authenticated", "aal": "aal1",
        "session_id": "5b1f2a7c-0d6e-4a43-9f1b-3c1d8e2f4a10", "is_anonymous": false,
        "app_metadata": {"provider": "email", "providers": ["email"]}, "user_metadata": {"email_verified": true},
    });
    let mut tokens = vec![(
        "HS256 (jwt_secret)".to_string(),
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"bench-secret"),
        )
        .expect("sign"),
    )];
    for (kid, alg, pem) in KEYS {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_string());
        let token = jsonwebtoken::encode(&header, &claims, &encoding_key(alg, pem)).expect("sign");
        tokens.push((format!("{alg:?} (cached JWKS)"), token));
    }

    println!("verify cost per request, {iterations} verifications × 5 rounds, median round");
    println!("| token | µs per verify |");
    println!("|---|---|");
    for (name, token) in &tokens {
        auth.verify(token).await.expect("valid");
        let mut rounds: Vec<f64> = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            for _ in 0..iterations {
                std::hint::black_box(
                    auth.verify(std::hint::black_box(token))
                        .await
                        .expect("valid"),
                );
            }
            rounds.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations));
        }
        rounds.sort_by(f64::total_cmp);
        println!("| {name} | {:.1} |", rounds[2]);
    }
    let fetches = auth.jwks().map_or(0, |j| j.fetches());
    println!("key set fetches: {fetches}");
    tasks.stop();
}
