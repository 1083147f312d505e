//! Tokens signed by an identity provider's keys, as Supabase issues them: a real JWKS server on loopback (keys
//! checked in under `tests/fixtures/jwks`, test-only), chatgate configured with `[auth] supabase_url`, and real
//! HTTP requests. Covers ES256, RS256 and EdDSA; rotation; the refetch limit for unknown kids; the endpoint going
//! down and coming back; every forgery; Supabase-shaped claims (admin via `app_metadata`, never
//! `user_metadata`; anonymous sign-ins).

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::{Backend, TestServer, sse_events};
use futures::StreamExt;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ES256: &[u8] = include_bytes!("fixtures/jwks/es256.pem");
const ES256_NEXT: &[u8] = include_bytes!("fixtures/jwks/es256-next.pem");
const RS256: &[u8] = include_bytes!("fixtures/jwks/rs256.pem");
const ED25519: &[u8] = include_bytes!("fixtures/jwks/ed25519.pem");

/// A signing key of the test identity provider.
struct Signer {
    kid: &'static str,
    algorithm: Algorithm,
    key: EncodingKey,
}

impl Signer {
    fn new(kid: &'static str, algorithm: Algorithm, pem: &[u8]) -> Self {
        let key = match algorithm {
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            other => panic!("no fixture for {other:?}"),
        }
        .expect("fixture key");
        Self {
            kid,
            algorithm,
            key,
        }
    }

    /// The public key as the JWKS publishes it (Supabase's shape: `kid`, `alg`, `use`, `key_ops`).
    fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.algorithm).expect("public jwk");
        jwk.common.key_id = Some(self.kid.into());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let mut value = serde_json::to_value(jwk).expect("jwk json");
        value["key_ops"] = json!(["verify"]);
        value["ext"] = json!(true);
        value
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.algorithm, Some(self.kid), claims)
    }

    fn sign_as(&self, algorithm: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }
}

/// A JWKS endpoint at `{url}/auth/v1/.well-known/jwks.json`, as Supabase serves it: its keys can change, it can
/// go down (503), and it counts the fetches.
struct IdentityProvider {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    down: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
}

impl IdentityProvider {
    async fn start(keys: Vec<Value>) -> Self {
        let keys = Arc::new(Mutex::new(keys));
        let down = Arc::new(AtomicBool::new(false));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (k, d, f) = (keys.clone(), down.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/auth/v1/.well-known/jwks.json",
            axum::routing::get(move || {
                let (keys, down, fetches) = (k.clone(), d.clone(), f.clone());
                async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    if down.load(Ordering::SeqCst) {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    let body = json!({ "keys": *keys.lock().expect("keys") });
                    let mut response: Response = axum::Json(body).into_response();
                    response.headers_mut().insert(
                        header::CACHE_CONTROL,
                        HeaderValue::from_static("public, max-age=600"),
                    );
                    response
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            keys,
            down,
            fetches,
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn issuer(&self) -> String {
        format!("{}/auth/v1", self.url)
    }

    /// A Supabase access token's claims for `sub`, with `extra` merged in.
    fn claims(&self, sub: &str, extra: Value) -> Value {
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = json!({
            "iss": self.issuer(), "sub": sub, "aud": "authenticated", "exp": now + 3600, "iat": now,
            "email": format!("{sub}@example.com"), "phone": "", "role": "authenticated", "aal": "aal1",
            "amr": [{"method": "password", "timestamp": now}], "session_id": "5b1f2a7c-0d6e-4a43-9f1b-3c1d8e2f4a10",
            "is_anonymous": false,
            "app_metadata": {"provider": "email", "providers": ["email"]},
            "user_metadata": {"email_verified": true},
        });
        for (key, value) in extra.as_object().expect("object") {
            claims[key] = value.clone();
        }
        claims
    }
}

/// chatgate configured for the provider with `[auth] supabase_url`, and `extra` lines in `[auth]`; HS256 with
/// the test secret alongside unless `extra` sets another `jwt_secret`.
async fn gateway(idp: &IdentityProvider, extra: &str) -> TestServer {
    gateway_with_mock_delay(idp, extra, 0).await
}

/// As [`gateway`], the mock provider waiting `delay_ms` before each delta.
async fn gateway_with_mock_delay(idp: &IdentityProvider, extra: &str, delay_ms: u64) -> TestServer {
    let db = common::TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let secret = if extra.contains("jwt_secret") {
        String::new()
    } else {
        format!("jwt_secret = \"{}\"\n", common::SECRET)
    };
    let config = chatgate::config::Config::from_toml(&format!(
        "[database]\nurl = \"{}\"\n[auth]\nsupabase_url = \"{}\"\n{secret}{extra}\n[providers.mock]\ndelay_ms = {delay_ms}\n\
         [models.mock]\nprovider = \"mock\"\nmodel = \"mock-1\"\n[defaults]\nmodel = \"mock\"\n[titles]\nenabled = false\n",
        db.url, idp.url
    ))
    .expect("config");
    TestServer::start_with(config, db).await
}

async fn get(server: &TestServer, path: &str, token: &str) -> (StatusCode, Value) {
    let response = server
        .client
        .get(format!("{}{path}", server.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("get");
    let status = response.status();
    let body = if path == "/metrics" {
        Value::Null
    } else {
        response.json().await.unwrap_or(Value::Null)
    };
    (status, body)
}

async fn status(server: &TestServer, token: &str) -> StatusCode {
    get(server, "/api/v1/conversations", token).await.0
}

/// Creates a conversation with `token` and sends `content` in it, streamed: the conversation's id and every SSE
/// event of the reply.
async fn send_streamed(
    server: &TestServer,
    token: &str,
    content: &str,
) -> (String, Vec<common::SseEvent>) {
    let conversation: Value = server
        .client
        .post(format!("{}/api/v1/conversations", server.url))
        .bearer_auth(token)
        .json(&json!({"persona_id": server.persona_id().await}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let conversation_id = conversation["id"].as_str().expect("id").to_string();
    let response = server
        .client
        .post(format!(
            "{}/api/v1/conversations/{conversation_id}/messages",
            server.url
        ))
        .bearer_auth(token)
        .header(header::ACCEPT, "text/event-stream")
        .json(&json!({ "content": content }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    (conversation_id, sse_events(response).collect().await)
}

fn signers() -> (Signer, Signer, Signer) {
    (
        Signer::new("es-1", Algorithm::ES256, ES256),
        Signer::new("rs-1", Algorithm::RS256, RS256),
        Signer::new("ed-1", Algorithm::EdDSA, ED25519),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_tokens_signed_with_es256_rs256_and_eddsa_are_accepted() {
    let (es, rs, ed) = signers();
    let idp = IdentityProvider::start(vec![es.jwk(), rs.jwk(), ed.jwk()]).await;
    let server = gateway(&idp, "").await;
    assert_eq!(idp.fetches(), 1, "fetched once at startup");

    for signer in [&es, &rs, &ed] {
        let user = format!("user-{}", signer.kid);
        let token = signer.sign(&idp.claims(&user, json!({})));
        assert_eq!(
            status(&server, &token).await,
            StatusCode::OK,
            "{}",
            signer.kid
        );
    }
    // The legacy HS256 secret keeps working alongside.
    assert_eq!(
        status(&server, &server.token("legacy")).await,
        StatusCode::OK
    );

    // A whole chat on an ES256 token: send, stream, and the reply saved under the token's sub.
    let token = es.sign(&idp.claims("7d3c1a52-supabase-user", json!({})));
    let (conversation_id, events) = send_streamed(&server, &token, "hello from supabase").await;
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"));
    let history = server
        .history("7d3c1a52-supabase-user", &conversation_id)
        .await;
    assert_eq!(history.len(), 2, "{history:?}");
    // Another user's token sees none of it.
    let other = rs.sign(&idp.claims("someone-else", json!({})));
    let (code, _) = get(
        &server,
        &format!("/api/v1/conversations/{conversation_id}"),
        &other,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // /health reports the key set.
    let jwks = &jwks_health(&server).await;
    assert_eq!(
        (
            &jwks["ok"],
            &jwks["stale"],
            &jwks["keys"],
            &jwks["max_age_secs"]
        ),
        (&json!(true), &json!(false), &json!(3), &json!(600)),
        "{jwks}"
    );
    assert_eq!(idp.fetches(), 1, "known kids never fetch");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_comes_from_app_metadata_never_user_metadata_and_anonymous_is_403() {
    let (es, _, _) = signers();
    let idp = IdentityProvider::start(vec![es.jwk()]).await;
    let server = gateway(&idp, "").await;
    let metrics = |claims: Value| {
        let token = es.sign(&idp.claims("u-admin-check", claims));
        let server = &server;
        async move { get(server, "/metrics", &token).await.0 }
    };
    // Supabase's own `role: authenticated` is no admin; `user_metadata` is the user's to edit.
    assert_eq!(metrics(json!({})).await, StatusCode::FORBIDDEN);
    assert_eq!(
        metrics(json!({"user_metadata": {"role": "admin"}})).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        metrics(json!({"role": "admin"})).await,
        StatusCode::FORBIDDEN,
        "with supabase_url the admin claim is app_metadata.role"
    );
    assert_eq!(
        metrics(json!({"app_metadata": {"provider": "email", "role": "admin"}})).await,
        StatusCode::OK
    );
    assert_eq!(
        metrics(json!({"app_metadata": {"role": ["support", "admin"]}})).await,
        StatusCode::OK
    );

    // An anonymous sign-in: 403, saying why and how to allow it.
    let anonymous = es.sign(&idp.claims(
        "anon-1",
        json!({"is_anonymous": true, "amr": [{"method": "anonymous"}]}),
    ));
    let (code, body) = get(&server, "/api/v1/conversations", &anonymous).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("allow_anonymous")),
        "{body}"
    );
    server.stop().await;

    let server = gateway(&idp, "allow_anonymous = true\n").await;
    assert_eq!(status(&server, &anonymous).await, StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgeries_are_refused() {
    use base64::Engine;
    let (es, rs, _) = signers();
    let idp = IdentityProvider::start(vec![es.jwk(), rs.jwk()]).await;
    let server = gateway(&idp, "").await;
    let claims = idp.claims("mallory", json!({"app_metadata": {"role": "admin"}}));
    assert_eq!(status(&server, &es.sign(&claims)).await, StatusCode::OK);
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let rsa_public_pem = {
        // The RSA public key as an attacker would find it: HMAC-signing with it is the classic confusion.
        let jwk = rs.jwk();
        format!("{}.{}", jwk["n"], jwk["e"])
    };
    let now = jsonwebtoken::get_current_timestamp();
    let stranger = Signer::new("es-1", Algorithm::ES256, ES256_NEXT);
    let forged: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT", "kid": "es-1"})),
                b64(&claims)
            ),
        ),
        (
            "HS256 signed with the RSA public key",
            jsonwebtoken::encode(
                &Header {
                    kid: Some("rs-1".into()),
                    ..Header::new(Algorithm::HS256)
                },
                &claims,
                &EncodingKey::from_secret(rsa_public_pem.as_bytes()),
            )
            .expect("sign"),
        ),
        (
            "RS256 header naming the EC key",
            rs.sign_as(Algorithm::RS256, Some("es-1"), &claims),
        ),
        (
            "PS256 with the RS256 key",
            rs.sign_as(Algorithm::PS256, Some("rs-1"), &claims),
        ),
        ("another key under a known kid", stranger.sign(&claims)),
        ("no kid", es.sign_as(Algorithm::ES256, None, &claims)),
        (
            "expired",
            es.sign(&idp.claims("mallory", json!({"exp": now - 3600}))),
        ),
        (
            "not valid yet",
            es.sign(&idp.claims("mallory", json!({"nbf": now + 3600}))),
        ),
        (
            "another project's issuer",
            es.sign(&idp.claims(
                "mallory",
                json!({"iss": "https://other.supabase.co/auth/v1"}),
            )),
        ),
        (
            "the anon key's audience",
            es.sign(&idp.claims("mallory", json!({"aud": "anon"}))),
        ),
        ("no audience", {
            let mut c = claims.clone();
            c.as_object_mut().expect("object").remove("aud");
            es.sign(&c)
        }),
        ("payload swapped under the signature", {
            let good = es.sign(&claims);
            let mut parts = good.split('.');
            let (head, _, signature) = (parts.next(), parts.next(), parts.next());
            format!(
                "{}.{}.{}",
                head.expect("header"),
                b64(&idp.claims("alice", json!({"app_metadata": {"role": "admin"}}))),
                signature.expect("signature")
            )
        }),
    ];
    for (what, token) in &forged {
        let (code, body) = get(&server, "/api/v1/conversations", token).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["error"], "unauthorized", "{what}: {body}");
    }
    // The algorithm is the key's, and the messages say which rule failed.
    let (_, body) = get(
        &server,
        "/api/v1/conversations",
        &rs.sign_as(Algorithm::RS256, Some("es-1"), &claims),
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("not its key's (ES256)")),
        "{body}"
    );
    server.stop().await;

    // Without a key set, an asymmetric token is refused saying what would accept it.
    let plain = TestServer::start(Backend::Sqlite, None, "")
        .await
        .expect("sqlite");
    let (code, body) = get(&plain, "/api/v1/conversations", &es.sign(&claims)).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("jwks_url")),
        "{body}"
    );
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_in_key_is_accepted_after_one_refetch_and_random_kids_fetch_once() {
    let (es, _, _) = signers();
    let idp = IdentityProvider::start(vec![es.jwk()]).await;
    let server = gateway(&idp, "").await;
    assert_eq!(idp.fetches(), 1);

    // Supabase rotates: the standby key becomes the one in use; tokens signed by it arrive before the cache
    // expires.
    let next = Signer::new("es-2", Algorithm::ES256, ES256_NEXT);
    idp.keys.lock().expect("keys").push(next.jwk());
    let token = next.sign(&idp.claims("rotated", json!({})));
    assert_eq!(status(&server, &token).await, StatusCode::OK);
    assert_eq!(idp.fetches(), 2, "one refetch for the new kid");
    assert_eq!(status(&server, &token).await, StatusCode::OK);
    // The previous key still verifies the tokens it signed.
    assert_eq!(
        status(&server, &es.sign(&idp.claims("old", json!({})))).await,
        StatusCode::OK
    );
    assert_eq!(idp.fetches(), 2, "both kids are cached now");

    // A flood of random kids, at once and then one after another: no more fetches within 30 s.
    let claims = idp.claims("flood", json!({}));
    let flood = futures::future::join_all((0..100).map(|i| {
        let token = es.sign_as(Algorithm::ES256, Some(&format!("random-{i}")), &claims);
        let server = &server;
        async move { status(server, &token).await }
    }))
    .await;
    assert!(
        flood.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{flood:?}"
    );
    for i in 0..20 {
        let token = es.sign_as(Algorithm::ES256, Some(&format!("later-{i}")), &claims);
        assert_eq!(status(&server, &token).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        idp.fetches(),
        2,
        "unknown kids refetch at most once per 30 s in all, and es-2 just did"
    );
    server.stop().await;
}

/// A token is remembered once it verified, but never past its key: when the key set drops the key (rotated out,
/// revoked), the next request with the token is verified again and refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_dropped_from_the_key_set_stops_its_tokens_even_after_they_verified() {
    let (es, _, _) = signers();
    let idp = IdentityProvider::start(vec![es.jwk()]).await;
    let server = gateway(&idp, "").await;
    let old = es.sign(&idp.claims("old", json!({})));
    assert_eq!(status(&server, &old).await, StatusCode::OK);
    assert_eq!(status(&server, &old).await, StatusCode::OK);

    // The provider's set now holds only the next key; the first token signed by it makes chatgate refetch.
    let next = Signer::new("es-2", Algorithm::ES256, ES256_NEXT);
    *idp.keys.lock().expect("keys") = vec![next.jwk()];
    let new = next.sign(&idp.claims("new", json!({})));
    assert_eq!(status(&server, &new).await, StatusCode::OK);
    assert_eq!(idp.fetches(), 2, "one refetch for the new kid");
    let (code, body) = get(&server, "/api/v1/conversations", &old).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("not in the key set")),
        "{body}"
    );
    assert_eq!(status(&server, &new).await, StatusCode::OK);
    server.stop().await;
}

async fn jwks_health(server: &TestServer) -> Value {
    let health: Value = reqwest::get(format!("{}/health", server.url))
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    health["auth"]["jwks"].clone()
}

/// Polls `/health` until the key set's `stale` is `want` (up to 15 s).
async fn wait_for_stale(server: &TestServer, want: bool) -> Value {
    for _ in 0..150 {
        let jwks = jwks_health(server).await;
        if jwks["stale"] == json!(want) {
            return jwks;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stale never became {want}: {}", jwks_health(server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_jwks_endpoint_is_down_the_last_good_keys_keep_working() {
    let (es, _, _) = signers();
    let idp = IdentityProvider::start(vec![es.jwk()]).await;
    let server = gateway(&idp, "").await;
    let token = es.sign(&idp.claims("steady", json!({})));
    assert_eq!(status(&server, &token).await, StatusCode::OK);

    idp.down.store(true, Ordering::SeqCst);
    // An unknown kid makes the refetch that finds the endpoint down.
    let unknown = es.sign_as(Algorithm::ES256, Some("es-9"), &idp.claims("x", json!({})));
    assert_eq!(status(&server, &unknown).await, StatusCode::UNAUTHORIZED);
    let jwks = wait_for_stale(&server, true).await;
    assert_eq!(
        (&jwks["ok"], &jwks["keys"]),
        (&json!(true), &json!(1)),
        "{jwks}"
    );
    assert!(
        jwks["error"].as_str().is_some_and(|e| e.contains("503")),
        "{jwks}"
    );
    // The cached key keeps verifying, and the server stays healthy.
    assert_eq!(status(&server, &token).await, StatusCode::OK);
    let health = reqwest::get(format!("{}/health", server.url))
        .await
        .expect("health");
    assert_eq!(health.status(), StatusCode::OK);

    // The background refresh retries within seconds and recovers by itself.
    idp.down.store(false, Ordering::SeqCst);
    let jwks = wait_for_stale(&server, false).await;
    assert_eq!(jwks["error"], Value::Null, "{jwks}");
    assert_eq!(status(&server, &token).await, StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_set_unreachable_at_startup_is_503_until_it_answers() {
    let (es, _, _) = signers();
    let idp = IdentityProvider::start(vec![es.jwk()]).await;
    idp.down.store(true, Ordering::SeqCst);
    // No jwt_secret of its own: HS256 is off, as in a project on asymmetric keys only.
    let server = gateway(&idp, "jwt_secret = \"chatgate-dev-secret-change-me\"").await;
    let token = es.sign(&idp.claims("early", json!({})));
    let (code, body) = get(&server, "/api/v1/conversations", &token).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let jwks = jwks_health(&server).await;
    assert_eq!(
        (&jwks["ok"], &jwks["stale"]),
        (&json!(false), &json!(true)),
        "{jwks}"
    );
    // HS256 tokens are refused when no secret is set (the development secret never signs in production).
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &idp.claims("dev", json!({})),
        &EncodingKey::from_secret(chatgate::config::DEV_JWT_SECRET.as_bytes()),
    )
    .expect("sign");
    let (code, body) = get(&server, "/api/v1/conversations", &hs).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");

    idp.down.store(false, Ordering::SeqCst);
    wait_for_stale(&server, false).await;
    assert_eq!(status(&server, &token).await, StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_checked_when_a_stream_opens_not_on_every_event() {
    let (es, _, _) = signers();
    let idp = IdentityProvider::start(vec![es.jwk()]).await;
    // No leeway, and a reply of about 4 s (the mock's ~25 deltas, 150 ms apart).
    let server = gateway_with_mock_delay(&idp, "leeway_secs = 0", 150).await;
    let exp = jsonwebtoken::get_current_timestamp() + 2;
    let token = es.sign(&idp.claims("short-lived", json!({"exp": exp})));
    let (_, events) = send_streamed(&server, &token, "tell me a long story").await;
    assert!(
        jsonwebtoken::get_current_timestamp() > exp,
        "the reply should outlast the token"
    );
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"));
    let generation_id = events
        .iter()
        .find_map(|e| e.data["generation_id"].as_str())
        .unwrap_or_else(|| panic!("no start event in {events:?}"));
    // Re-attaching is opening a stream again: the expired token is refused then.
    let (code, body) = get(
        &server,
        &format!("/api/v1/generations/{generation_id}/stream"),
        &token,
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{body}"
    );
    server.stop().await;
}
