//! The signing keys of an identity provider, from its JSON Web Key Set (RFC 7517), e.g. Supabase's
//! `https://<ref>.supabase.co/auth/v1/.well-known/jwks.json`.
//!
//! - Keys are looked up by `kid`; each key's algorithm is pinned by the key itself (its `alg`, else its type and
//!   curve: EC P-256 → ES256, P-384 → ES384, RSA → RS256, OKP Ed25519 → EdDSA), never by the token's header.
//!   Symmetric (`oct`) keys, encryption keys and keys without a `kid` are skipped.
//! - The set is cached for its `Cache-Control: max-age` ([`DEFAULT_MAX_AGE`] without one; at least
//!   [`MIN_MAX_AGE`]) and refreshed in the background before it runs out.
//! - A token whose `kid` is unknown (a key rotated in since the last fetch) triggers one refetch; such refetches
//!   happen at most once per [`UNKNOWN_KID_REFETCH_INTERVAL`] in all, whatever the kid, so a flood of random
//!   kids never becomes a flood of fetches.
//! - When the endpoint fails, the last good keys keep working and [`Jwks::status`] says they are stale.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Serialize;

/// The cache lifetime of a key set served without `Cache-Control: max-age` (Supabase's own caches keep keys
/// about this long).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);
/// The shortest cache lifetime honoured, whatever the endpoint says.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(30);
/// The longest cache lifetime honoured, so a rotation is seen within a day at worst.
pub const MAX_MAX_AGE: Duration = Duration::from_secs(86_400);
/// At most one refetch for unknown kids per this interval, in all.
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// A fetch (connect, headers and body) that takes longer fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A key set larger than this is refused (Supabase's is under 1 KB).
const MAX_BODY_BYTES: usize = 1 << 20;
/// After a failed refresh, the next is tried after this, doubling up to [`MIN_MAX_AGE`].
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// One verification key, with the algorithm it is pinned to.
pub struct VerifyingKey {
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

/// The last good key set.
struct Cached {
    keys: HashMap<String, Arc<VerifyingKey>>,
    fetched_at: Option<(Instant, SystemTime)>,
    max_age: Duration,
}

/// How the last fetch went.
#[derive(Default)]
struct Attempts {
    last_error: Option<String>,
    fetches: u64,
}

/// The key set of one `jwks_url`, cached and refreshed. Cheap to share behind an `Arc`.
pub struct Jwks {
    url: String,
    client: reqwest::Client,
    cached: RwLock<Cached>,
    attempts: Mutex<Attempts>,
    /// When an unknown kid last caused a refetch; held across that fetch, so concurrent unknown kids wait for
    /// it instead of fetching again.
    unknown_kid_refetch: tokio::sync::Mutex<Option<Instant>>,
    /// Signalled after every fetch, so the refresh loop plans again (sooner after a failure seen elsewhere).
    fetched: tokio::sync::Notify,
}

/// What a lookup by kid found.
pub enum Lookup {
    Found(Arc<VerifyingKey>),
    /// The key set is loaded but has no key with this kid, even after the refetch allowed now.
    Unknown,
    /// No key set was ever fetched: the endpoint has been unreachable since startup.
    Unavailable,
}

/// `/health`'s view of the key set: `{ok, stale, keys, age_secs, fetched_at, max_age_secs, error}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JwksStatus {
    /// A key set is loaded.
    pub ok: bool,
    /// The last fetch failed, or the keys are older than their max-age and the refresh is overdue: tokens
    /// signed by a key rotated in since are refused until the endpoint answers again.
    pub stale: bool,
    pub keys: usize,
    /// Seconds since the key set was fetched.
    pub age_secs: Option<u64>,
    /// RFC 3339.
    pub fetched_at: Option<String>,
    pub max_age_secs: u64,
    /// Why the last fetch failed.
    pub error: Option<String>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// A key set for `url`, not fetched yet: call [`Jwks::refresh`] (at startup), then [`Jwks::run`].
    pub fn new(url: &str) -> Self {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            url: url.to_string(),
            client,
            cached: RwLock::new(Cached {
                keys: HashMap::new(),
                fetched_at: None,
                max_age: DEFAULT_MAX_AGE,
            }),
            attempts: Mutex::new(Attempts::default()),
            unknown_kid_refetch: tokio::sync::Mutex::new(None),
            fetched: tokio::sync::Notify::new(),
        }
    }

    /// The key set's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The cached key with this kid, without fetching.
    pub fn cached(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        read(&self.cached).keys.get(kid).cloned()
    }

    /// The key with this kid: from the cache, or after a refetch when the kid is unknown and no unknown kid
    /// caused one within [`UNKNOWN_KID_REFETCH_INTERVAL`].
    pub async fn key(&self, kid: &str) -> Lookup {
        if let Some(key) = self.cached(kid) {
            return Lookup::Found(key);
        }
        let mut last = self.unknown_kid_refetch.lock().await;
        // Another request may have fetched it while this one waited.
        if let Some(key) = self.cached(kid) {
            return Lookup::Found(key);
        }
        if last.is_none_or(|at| at.elapsed() >= UNKNOWN_KID_REFETCH_INTERVAL) {
            *last = Some(Instant::now());
            tracing::info!(kid, url = %self.url, "unknown signing key id: fetching the key set again");
            // A failure is recorded in the status; the lookup below answers from what is cached.
            let _ = self.refresh().await;
        }
        drop(last);
        match self.cached(kid) {
            Some(key) => Lookup::Found(key),
            None if read(&self.cached).fetched_at.is_none() => Lookup::Unavailable,
            None => Lookup::Unknown,
        }
    }

    /// Fetches the key set and replaces the cache with it.
    ///
    /// # Errors
    /// Why the fetch failed (unreachable, a non-2xx status, not a key set, no usable key); the cached keys are
    /// kept then.
    pub async fn refresh(&self) -> Result<(), String> {
        let result = self.fetch().await;
        let mut attempts = lock(&self.attempts);
        attempts.fetches += 1;
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("chatgate_jwks_fetches_total", "outcome" => label).increment(1);
        let outcome = match result {
            Ok((keys, max_age)) => {
                let count = keys.len();
                *self.cached.write().unwrap_or_else(|e| e.into_inner()) = Cached {
                    keys,
                    fetched_at: Some((Instant::now(), SystemTime::now())),
                    max_age,
                };
                if attempts.last_error.take().is_some() {
                    tracing::info!(url = %self.url, keys = count, "signing keys fetched again");
                }
                Ok(())
            }
            Err(err) => {
                tracing::warn!(
                    url = %self.url,
                    error = %err,
                    "cannot fetch the signing keys; the last good keys stay in use"
                );
                attempts.last_error = Some(err.clone());
                Err(err)
            }
        };
        drop(attempts);
        self.fetched.notify_one();
        outcome
    }

    /// Refreshes the key set before its max-age runs out, for ever (a service task); after a failure, again
    /// within seconds, backing off to [`MIN_MAX_AGE`].
    pub async fn run(self: Arc<Self>) {
        let mut retry = RETRY_AFTER_FAILURE;
        loop {
            let wait = if lock(&self.attempts).last_error.is_some() {
                retry
            } else {
                retry = RETRY_AFTER_FAILURE;
                let cached = read(&self.cached);
                let age = cached
                    .fetched_at
                    .map_or(Duration::ZERO, |(at, _)| at.elapsed());
                cached.max_age.saturating_sub(age)
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {
                    if self.refresh().await.is_err() {
                        retry = (retry * 2).min(MIN_MAX_AGE);
                    }
                    // This loop's own fetch left a wake-up behind; plan from its outcome instead.
                    let _ = tokio::time::timeout(Duration::ZERO, self.fetched.notified()).await;
                }
                // A fetch elsewhere (an unknown kid) changed the plan: a failure retries within seconds.
                () = self.fetched.notified() => {}
            }
        }
    }

    /// How many fetches were made (startup, refreshes, unknown kids).
    pub fn fetches(&self) -> u64 {
        lock(&self.attempts).fetches
    }

    /// The key set's state, for `/health`.
    pub fn status(&self) -> JwksStatus {
        // The same order as `refresh` (attempts, then the cache): taken the other way round, a `/health` during a
        // successful refresh deadlocked both, each holding the lock the other waited for.
        let attempts = lock(&self.attempts);
        let cached = read(&self.cached);
        let age = cached.fetched_at.map(|(at, _)| at.elapsed());
        JwksStatus {
            ok: cached.fetched_at.is_some(),
            stale: attempts.last_error.is_some()
                || age.is_none_or(|age| age > cached.max_age + MIN_MAX_AGE),
            keys: cached.keys.len(),
            age_secs: age.map(|a| a.as_secs()),
            fetched_at: cached
                .fetched_at
                .map(|(_, at)| chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339()),
            max_age_secs: cached.max_age.as_secs(),
            error: attempts.last_error.clone(),
        }
    }

    async fn fetch(&self) -> Result<(HashMap<String, Arc<VerifyingKey>>, Duration), String> {
        let mut response = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {}: {e}", self.url))?;
        if !response.status().is_success() {
            return Err(format!("GET {}: status {}", self.url, response.status()));
        }
        let max_age = max_age(response.headers());
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {}: {e}", self.url))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY_BYTES {
                return Err(format!("GET {}: the key set is over 1 MiB", self.url));
            }
        }
        let keys = parse_key_set(&body)?;
        Ok((keys, max_age))
    }
}

/// `Cache-Control: max-age` (RFC 9111 §5.2.2.1), clamped to [`MIN_MAX_AGE`]..[`MAX_MAX_AGE`];
/// [`DEFAULT_MAX_AGE`] when absent.
fn max_age(headers: &reqwest::header::HeaderMap) -> Duration {
    let secs = headers
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|directive| {
            let (name, value) = directive.trim().split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("max-age")
                .then(|| value.trim().trim_matches('"').parse::<u64>().ok())?
        });
    secs.map_or(DEFAULT_MAX_AGE, |s| {
        Duration::from_secs(s).clamp(MIN_MAX_AGE, MAX_MAX_AGE)
    })
}

/// The usable verification keys of a key set document `{"keys": [...]}`, by kid. Each key is read on its own,
/// so one key of a kind this crate does not know never hides the others.
///
/// # Errors
/// Not a key set, or no usable key in it.
fn parse_key_set(body: &[u8]) -> Result<HashMap<String, Arc<VerifyingKey>>, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(body)
        .map_err(|e| format!("not a JSON Web Key Set ({{\"keys\": [...]}}): {e}"))?;
    let mut keys = HashMap::new();
    for value in document.keys {
        let kid = value.get("kid").and_then(|k| k.as_str()).unwrap_or("");
        match verifying_key(&value) {
            Ok(key) if !kid.is_empty() => {
                keys.insert(kid.to_string(), Arc::new(key));
            }
            Ok(_) => tracing::warn!("skipping a signing key without a kid"),
            Err(why) => tracing::debug!(kid, why, "skipping a key of the key set"),
        }
    }
    if keys.is_empty() {
        return Err("the key set has no usable signing key".into());
    }
    Ok(keys)
}

/// One JWK as a verification key pinned to its algorithm.
fn verifying_key(value: &serde_json::Value) -> Result<VerifyingKey, &'static str> {
    let jwk: Jwk =
        serde_json::from_value(value.clone()).map_err(|_| "not a JWK this crate reads")?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return Err("not a signing key (use)");
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Err("not a verification key (key_ops)");
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return Err("unsupported curve"),
        },
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        // A symmetric key in a public key set would let anyone who reads it sign tokens.
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are never used"),
        _ => return Err("unsupported key type"),
    };
    let algorithm = match jwk.common.key_algorithm {
        None => by_type,
        Some(alg) => {
            let alg = Algorithm::try_from(alg).map_err(|_| "unsupported alg")?;
            let family_matches = match by_type {
                Algorithm::RS256 => matches!(
                    alg,
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512
                ),
                other => alg == other,
            };
            if !family_matches {
                return Err("alg does not match the key type");
            }
            alg
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "invalid key material")?;
    Ok(VerifyingKey { algorithm, key })
}

/// Whether `url` is plain `http://` to a host other than loopback (`localhost`, 127.0.0.0/8, `::1`): keys
/// fetched so can be swapped by anyone on the network path, so startup warns.
pub fn is_plain_http_off_loopback(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    let host = url.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    url.scheme() == "http" && !loopback
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_http_is_flagged_off_loopback_only() {
        for (url, flagged) in [
            (
                "http://supabase.internal:8000/auth/v1/.well-known/jwks.json",
                true,
            ),
            ("http://10.0.0.5/jwks.json", true),
            ("http://127.0.0.1:9999/jwks.json", false),
            ("http://localhost/jwks.json", false),
            ("http://[::1]:80/jwks.json", false),
            (
                "https://abc.supabase.co/auth/v1/.well-known/jwks.json",
                false,
            ),
            ("", false),
        ] {
            assert_eq!(is_plain_http_off_loopback(url), flagged, "{url}");
        }
    }

    #[test]
    fn max_age_is_read_and_clamped() {
        let headers = |value: &str| {
            let mut map = reqwest::header::HeaderMap::new();
            map.insert(
                reqwest::header::CACHE_CONTROL,
                value.parse().expect("header"),
            );
            map
        };
        let cases = [
            ("public, max-age=600", 600),
            ("max-age=\"120\", must-revalidate", 120),
            ("MAX-AGE=3", 30),
            ("max-age=9999999", 86_400),
            ("no-cache", 600),
            ("max-age=abc", 600),
        ];
        for (value, secs) in cases {
            assert_eq!(
                max_age(&headers(value)),
                Duration::from_secs(secs),
                "{value}"
            );
        }
        assert_eq!(max_age(&reqwest::header::HeaderMap::new()), DEFAULT_MAX_AGE);
    }

    #[test]
    fn keys_are_pinned_by_their_type_and_odd_keys_skipped() {
        // Supabase's shape (an ES256 key), an RSA key with no alg, an Ed25519 key, and keys to skip.
        let es = json!({"kty": "EC", "crv": "P-256", "kid": "es", "alg": "ES256", "use": "sig", "key_ops": ["verify"], "ext": true,
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        let rsa = json!({"kty": "RSA", "kid": "rs", "e": "AQAB",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"});
        let ed = json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let cases = [
            (
                json!({"kty": "oct", "kid": "hs", "k": "c2VjcmV0"}),
                "symmetric",
            ),
            (
                json!({"kty": "RSA", "kid": "enc", "use": "enc", "e": "AQAB", "n": rsa["n"]}),
                "use",
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "kid": "es-rs", "alg": "RS256", "x": es["x"], "y": es["y"]}),
                "alg does not match",
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "kid": "sign-only", "key_ops": ["sign"], "x": es["x"], "y": es["y"]}),
                "key_ops",
            ),
            (json!({"kty": "XYZ", "kid": "new"}), "unsupported key type"),
        ];
        for (key, why) in &cases {
            let err = verifying_key(key)
                .err()
                .unwrap_or_else(|| panic!("{key} accepted"));
            assert!(err.contains(why), "{key}: {err}");
        }
        let mut set: Vec<serde_json::Value> = cases.into_iter().map(|(k, _)| k).collect();
        set.extend([es, rsa, ed, json!({"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})]);
        let keys = parse_key_set(json!({ "keys": set }).to_string().as_bytes()).expect("key set");
        let mut pinned: Vec<_> = keys
            .iter()
            .map(|(kid, k)| (kid.as_str(), k.algorithm))
            .collect();
        pinned.sort_by_key(|(kid, _)| *kid);
        assert_eq!(
            pinned,
            [
                ("ed", Algorithm::EdDSA),
                ("es", Algorithm::ES256),
                ("rs", Algorithm::RS256)
            ]
        );
        assert!(parse_key_set(br#"{"keys": []}"#).is_err());
        assert!(
            parse_key_set(br#"{"keys": [{"kty": "oct", "kid": "a", "k": "c2VjcmV0"}]}"#).is_err()
        );
        assert!(parse_key_set(b"<html>").is_err());
    }
}
