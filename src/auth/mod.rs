//! Bearer JWT authentication, deny by default.
//!
//! Tokens are JWTs (RFC 7519) verified with jsonwebtoken, by one of two kinds of key:
//! - HS256 with the shared `jwt_secret` (chatgate's own `token` command, legacy Supabase projects);
//! - a public key from the identity provider's key set (`jwks_url`, see [`jwks`]) chosen by the token's `kid`:
//!   ES256/ES384, RS256/RS384/RS512, PS256/PS384/PS512 or EdDSA, the algorithm pinned by the key.
//!
//! The token's header only says which kind of key to look for; it never chooses the algorithm (`none`, HS384, an
//! RS256 header over an HMAC signature, a key used with another algorithm than its own: all 401).
//! `exp` is required and checked, `nbf` is checked when present (both with `leeway_secs`), and when `issuer` /
//! `audience` are configured the token must carry that `iss` / `aud` (a token without the claim is refused, not
//! just one with another value). The user id is `sub`, or `user_id` when `sub` is absent (the seeds' tokens).
//! Admin routes need the claim at `admin_claim` (a dotted path, default `role`) to be `"admin"` or an array
//! holding it. Tokens with `is_anonymous: true` (Supabase anonymous sign-ins) are 403 unless `allow_anonymous`.
//! The HTTP side (the bearer header, the public routes) is `api::auth`.
//!
//! A token that verified is remembered, by its whole text (up to [`VERIFIED_TOKENS_BYTES`] of tokens), so a client
//! that sends the same token with every request pays for its signature once: a later request with it checks
//! only `exp` and `nbf` against the clock, and for a key-set token that its key is still the one the key set
//! holds (a refetch that drops or replaces the key sends the token through full verification again). Envoy's
//! JWT filter does the same (`jwt_cache_config`). A token that failed is never remembered.

pub mod jwks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use crate::config::AuthConfig;
use crate::error::Error;
use crate::tasks::Tasks;
use jwks::{Jwks, JwksStatus, Lookup, VerifyingKey};

/// How many bytes of verified tokens are remembered (each token's length plus its caller's id and
/// [`VERIFIED_ENTRY_BYTES`]); the least used are forgotten past it. 4 MiB holds about 4,000 Supabase tokens.
pub const VERIFIED_TOKENS_BYTES: u64 = 4 << 20;
/// What one remembered token costs besides its text and its user id: the entry and the cache's slot.
const VERIFIED_ENTRY_BYTES: u64 = 96;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: String,
    pub admin: bool,
    /// The token's `exp`, in seconds since the Unix epoch (long-lived connections close then).
    pub expires_at: Option<u64>,
}

/// A caller with the admin role; 403 for anyone else.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

/// The algorithms a key set's keys may be pinned to.
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

fn user_id(claims: &Map<String, Value>) -> Option<String> {
    if let Some(sub) = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        return Some(sub.to_string());
    }
    match claims.get("user_id") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether the claim at `path` is `"admin"`, or an array holding `"admin"`.
fn claim_is_admin(claims: &Map<String, Value>, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let value = rest
        .iter()
        .try_fold(claims.get(first), |value, key| Some(value?.get(key)))
        .flatten();
    match value {
        Some(Value::String(role)) => role == "admin",
        Some(Value::Array(roles)) => roles.iter().any(|r| r.as_str() == Some("admin")),
        _ => false,
    }
}

/// Verifies tokens (with the shared secret and the key set), and mints HS256 ones for the CLI and the
/// development token endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator(Arc<Inner>);

struct Inner {
    /// The HS256 keys; `None` when only the key set verifies tokens.
    hmac: Option<(DecodingKey, EncodingKey)>,
    jwks: Option<Arc<Jwks>>,
    /// The claim rules, once per algorithm (jsonwebtoken checks the header's algorithm against them).
    validations: HashMap<Algorithm, Validation>,
    issuer: Option<String>,
    audience: Option<String>,
    admin_claim: Vec<String>,
    allow_anonymous: bool,
    /// `leeway_secs`, for the clock checks of a remembered token.
    leeway_secs: u64,
    /// Tokens that verified, by their whole text.
    verified: quick_cache::sync::Cache<String, Verified, VerifiedWeight>,
}

/// A token that verified: its caller, what the clock must still allow, and the key-set key that verified it.
#[derive(Clone)]
struct Verified {
    /// The caller; its `expires_at` is the token's `exp`, which verification requires.
    user: AuthUser,
    /// `nbf`, when the token has one.
    not_before: Option<u64>,
    /// The key-set key (and its kid) that verified it; `None` for HS256.
    key: Option<(String, Arc<VerifyingKey>)>,
}

/// Weighs a remembered token by the bytes it holds.
#[derive(Clone, Copy)]
struct VerifiedWeight;

impl quick_cache::Weighter<String, Verified> for VerifiedWeight {
    fn weight(&self, token: &String, verified: &Verified) -> u64 {
        (token.len() + verified.user.user_id.len()) as u64 + VERIFIED_ENTRY_BYTES
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256", &self.0.hmac.is_some())
            .field("jwks", &self.0.jwks)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// From `[auth]` (as loaded, `supabase_url` expanded). The key set is not fetched yet: [`Authenticator::start`].
    pub fn new(config: &AuthConfig) -> Self {
        let issuer = Some(config.issuer.clone()).filter(|s| !s.is_empty());
        let audience = Some(config.audience.clone()).filter(|s| !s.is_empty());
        let validation = |algorithm| {
            let mut validation = Validation::new(algorithm);
            validation.leeway = config.leeway_secs;
            validation.validate_nbf = true;
            // jsonwebtoken checks `iss`/`aud` only when the token has them, unless they are required claims.
            let mut required = vec!["exp"];
            required.extend(issuer.as_ref().map(|_| "iss"));
            required.extend(audience.as_ref().map(|_| "aud"));
            validation.set_required_spec_claims(&required);
            if let Some(iss) = &issuer {
                validation.set_issuer(&[iss]);
            }
            match &audience {
                Some(aud) => validation.set_audience(&[aud]),
                None => validation.validate_aud = false,
            }
            (algorithm, validation)
        };
        let hmac = config.hs256_enabled().then(|| {
            let secret = config.jwt_secret.expose_secret().as_bytes();
            (
                DecodingKey::from_secret(secret),
                EncodingKey::from_secret(secret),
            )
        });
        let jwks = Some(config.jwks_url.as_str())
            .filter(|url| !url.is_empty())
            .map(|url| Arc::new(Jwks::new(url)));
        let admin_claim = if config.admin_claim.is_empty() {
            "role"
        } else {
            &config.admin_claim
        };
        Self(Arc::new(Inner {
            hmac,
            jwks,
            validations: std::iter::once(Algorithm::HS256)
                .chain(ASYMMETRIC)
                .map(validation)
                .collect(),
            issuer,
            audience,
            admin_claim: admin_claim.split('.').map(str::to_string).collect(),
            allow_anonymous: config.allow_anonymous,
            leeway_secs: config.leeway_secs,
            verified: quick_cache::sync::Cache::with_weighter(
                256,
                VERIFIED_TOKENS_BYTES,
                VerifiedWeight,
            ),
        }))
    }

    /// Fetches the key set (when one is configured) and keeps it fresh in the background. A key set that
    /// cannot be fetched now is logged and tried again within seconds; tokens wait for it meanwhile (503).
    pub async fn start(&self, tasks: &Tasks) {
        if let Some(jwks) = &self.0.jwks {
            if jwks.refresh().await.is_ok() {
                tracing::info!(url = jwks.url(), "signing keys fetched");
            }
            tasks.spawn_service(Arc::clone(jwks).run());
        }
    }

    /// The key set's state for `/health`; `None` without `jwks_url`.
    pub fn jwks_status(&self) -> Option<JwksStatus> {
        self.0.jwks.as_ref().map(|jwks| jwks.status())
    }

    /// The key set, when configured.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.0.jwks.as_ref()
    }

    /// Verifies a token: the key its header names (fetching the key set once more for an unknown `kid`, see
    /// [`jwks`]), then its signature and claims.
    ///
    /// # Errors
    /// 401 `unauthorized` saying why (expired, not valid yet, bad signature, an algorithm or key not accepted,
    /// wrong or missing issuer/audience, no user id); 403 `forbidden` for an anonymous sign-in when
    /// `allow_anonymous` is off; 503 `unavailable` when the token needs the key set and it was never fetched.
    pub async fn verify(&self, token: &str) -> Result<AuthUser, Error> {
        if let Some(user) = self.remembered(token) {
            return Ok(user);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Error::unauthorized("the token is malformed"))?;
        let inner = &*self.0;
        let user = match header.alg {
            Algorithm::HS256 => match &inner.hmac {
                Some((key, _)) => self.decode(token, key, Algorithm::HS256, None)?,
                None => {
                    return Err(Error::unauthorized(
                        "HS256 tokens are not accepted: no auth.jwt_secret is configured, keys come from auth.jwks_url",
                    ));
                }
            },
            alg if ASYMMETRIC.contains(&alg) => {
                let Some(jwks) = &inner.jwks else {
                    return Err(Error::unauthorized(format!(
                        "the token's algorithm {alg:?} is not accepted (HS256 expected; set auth.jwks_url to accept \
                         tokens signed by an identity provider's keys)"
                    )));
                };
                let Some(kid) = header.kid.as_deref() else {
                    return Err(Error::unauthorized(
                        "the token has no kid (key id) in its header",
                    ));
                };
                let key = match jwks.key(kid).await {
                    Lookup::Found(key) => key,
                    Lookup::Unknown => {
                        return Err(Error::unauthorized(format!(
                            "the token's signing key {kid} is not in the key set"
                        )));
                    }
                    Lookup::Unavailable => {
                        return Err(Error::unavailable(
                            "the identity provider's signing keys could not be fetched",
                            format!("GET {}", jwks.url()),
                        ));
                    }
                };
                if key.algorithm != alg {
                    return Err(Error::unauthorized(format!(
                        "the token's algorithm {alg:?} is not its key's ({:?})",
                        key.algorithm
                    )));
                }
                self.decode(token, &key.key, alg, Some((kid, &key)))?
            }
            alg => {
                return Err(Error::unauthorized(format!(
                    "the token's algorithm {alg:?} is not accepted"
                )));
            }
        };
        Ok(user)
    }

    /// The caller of a token that verified before, when the clock still allows it (`exp`, `nbf`, with
    /// `leeway_secs`, as jsonwebtoken checks them) and, for a key-set token, the key set still holds the very key
    /// that verified it. `None` sends the token through [`Authenticator::verify`]'s full check, which also says
    /// why it fails.
    fn remembered(&self, token: &str) -> Option<AuthUser> {
        let inner = &*self.0;
        let verified = inner.verified.get(token)?;
        let now = jsonwebtoken::get_current_timestamp();
        let clock_allows = verified
            .user
            .expires_at
            .is_some_and(|exp| exp.saturating_add(inner.leeway_secs) >= now)
            && verified
                .not_before
                .is_none_or(|nbf| nbf <= now.saturating_add(inner.leeway_secs));
        let key_current = match (&verified.key, &inner.jwks) {
            (None, _) => true,
            (Some((kid, key)), Some(jwks)) => jwks
                .cached(kid)
                .is_some_and(|current| Arc::ptr_eq(&current, key)),
            (Some(_), None) => false,
        };
        if clock_allows && key_current {
            Some(verified.user)
        } else {
            inner.verified.remove(token);
            None
        }
    }

    /// Checks the signature with `key` under `algorithm` and the claims, reads the caller, and remembers the
    /// token; `jwks_key` is the key-set key (and its kid) when `key` is one.
    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        algorithm: Algorithm,
        jwks_key: Option<(&str, &Arc<VerifyingKey>)>,
    ) -> Result<AuthUser, Error> {
        use jsonwebtoken::errors::ErrorKind;
        let inner = &*self.0;
        let validation = &inner.validations[&algorithm];
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, key, validation).map_err(|e| {
                if let ErrorKind::MissingRequiredClaim(claim) = e.kind() {
                    return Error::unauthorized(format!("the token has no {claim} claim"));
                }
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::InvalidSignature => "the token's signature is invalid",
                    ErrorKind::InvalidIssuer => "the token's issuer is not accepted",
                    ErrorKind::InvalidAudience => "the token's audience is not accepted",
                    ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted",
                    ErrorKind::ImmatureSignature => "the token is not valid yet",
                    _ => "the token is malformed",
                };
                Error::unauthorized(why)
            })?;
        let claims = data.claims;
        let user_id = user_id(&claims)
            .ok_or_else(|| Error::unauthorized("the token has no sub or user_id"))?;
        if !inner.allow_anonymous && claims.get("is_anonymous") == Some(&Value::Bool(true)) {
            return Err(Error::forbidden(
                "anonymous sign-ins are not accepted (set auth.allow_anonymous = true to accept them)",
            ));
        }
        let user = AuthUser {
            user_id,
            admin: claim_is_admin(&claims, &inner.admin_claim),
            // NumericDate may be fractional (RFC 7519 §2).
            expires_at: claims
                .get("exp")
                .and_then(|exp| exp.as_u64().or_else(|| exp.as_f64().map(|f| f as u64))),
        };
        // jsonwebtoken accepted `exp` and `nbf` only as whole numbers, so `expires_at` and these are the
        // figures it checked.
        let verified = Verified {
            user: user.clone(),
            not_before: claims.get("nbf").and_then(Value::as_u64),
            key: jwks_key.map(|(kid, key)| (kid.to_string(), Arc::clone(key))),
        };
        inner.verified.insert(token.to_string(), verified);
        Ok(user)
    }

    /// Signs an HS256 token for `sub` valid for `ttl`, with `"admin"` at the admin claim (`role` by default)
    /// when `admin`; `iss`/`aud` as configured.
    ///
    /// # Errors
    /// 400 when HS256 is off (keys come from `jwks_url` and no `jwt_secret` is set): tokens come from the
    /// identity provider then.
    pub fn mint(&self, sub: &str, admin: bool, ttl: Duration) -> Result<String, Error> {
        let Some((_, key)) = &self.0.hmac else {
            return Err(Error::new(
                crate::error::ErrorKind::Invalid,
                "hs256_disabled",
                "no auth.jwt_secret is configured: tokens come from the identity provider (auth.jwks_url)",
            ));
        };
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = Map::new();
        claims.insert("sub".into(), sub.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + ttl.as_secs()).into());
        if let Some(iss) = &self.0.issuer {
            claims.insert("iss".into(), iss.as_str().into());
        }
        if let Some(aud) = &self.0.audience {
            claims.insert("aud".into(), aud.as_str().into());
        }
        if admin {
            // At the configured claim, so the token is an admin's under this configuration.
            let (last, parents) = self.0.admin_claim.split_last().expect("a claim path");
            let parent = parents.iter().fold(&mut claims, |map, key| {
                let entry = map.entry(key.as_str()).or_insert_with(|| Map::new().into());
                if !entry.is_object() {
                    *entry = Map::new().into();
                }
                entry.as_object_mut().expect("an object")
            });
            parent.insert(last.clone(), "admin".into());
        }
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| Error::internal(format!("cannot sign a token: {e}")))
    }
}

#[cfg(test)]
impl Authenticator {
    /// [`Authenticator::verify`] for tests of HS256 tokens, which never wait.
    fn verify_blocking(&self, token: &str) -> Result<AuthUser, Error> {
        futures::executor::block_on(self.verify(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn authenticator(extra: &str) -> Authenticator {
        let config = Config::from_toml(&format!(
            "[auth]\njwt_secret = \"s3cret\"\n{extra}\n[providers.mock]\n[models.default]\nprovider = \"mock\"\nmodel = \"m\""
        ))
        .expect("config");
        Authenticator::new(&config.auth)
    }

    fn sign(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }

    fn in_an_hour() -> u64 {
        jsonwebtoken::get_current_timestamp() + 3600
    }

    #[test]
    fn minted_tokens_verify_with_role() {
        let auth = authenticator("");
        let user = auth
            .verify_blocking(
                &auth
                    .mint("alice", true, Duration::from_secs(60))
                    .expect("mint"),
            )
            .expect("valid");
        assert_eq!((user.user_id.as_str(), user.admin), ("alice", true));
        assert!(
            user.expires_at
                .is_some_and(|exp| exp > jsonwebtoken::get_current_timestamp())
        );
        let user = auth
            .verify_blocking(
                &auth
                    .mint("bob", false, Duration::from_secs(60))
                    .expect("mint"),
            )
            .expect("valid");
        assert!(!user.admin);
    }

    #[test]
    fn user_id_claim_is_used_when_sub_is_absent() {
        let auth = authenticator("");
        let user = auth
            .verify_blocking(&sign(
                serde_json::json!({"user_id": 42, "exp": in_an_hour()}),
                "s3cret",
            ))
            .expect("valid");
        assert_eq!(user.user_id, "42");
        let user = auth
            .verify_blocking(&sign(
                serde_json::json!({"sub": "u-1", "user_id": 7, "exp": in_an_hour()}),
                "s3cret",
            ))
            .expect("valid");
        assert_eq!(user.user_id, "u-1", "sub wins over user_id");
    }

    #[test]
    fn a_remembered_token_still_expires_and_a_refused_one_is_never_remembered() {
        let auth = authenticator("leeway_secs = 0");
        let now = jsonwebtoken::get_current_timestamp();
        let token = sign(serde_json::json!({"sub": "a", "exp": now + 1}), "s3cret");
        assert_eq!(auth.verify_blocking(&token).expect("valid").user_id, "a");
        assert_eq!(auth.0.verified.len(), 1);
        assert_eq!(
            auth.verify_blocking(&token).expect("remembered").user_id,
            "a"
        );
        for refused in [
            sign(
                serde_json::json!({"sub": "a", "exp": now + 60}),
                "other-secret",
            ),
            sign(
                serde_json::json!({"sub": "a", "exp": now + 60, "nbf": now + 60}),
                "s3cret",
            ),
            sign(
                serde_json::json!({"sub": "b", "exp": now + 60, "is_anonymous": true}),
                "s3cret",
            ),
        ] {
            assert!(auth.verify_blocking(&refused).is_err());
        }
        assert_eq!(auth.0.verified.len(), 1, "only the token that verified");

        // `exp` passes while the token is remembered: refused, with the reason, and forgotten.
        while jsonwebtoken::get_current_timestamp() <= now + 1 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let err = auth.verify_blocking(&token).expect_err("expired");
        assert!(err.message.contains("expired"), "{}", err.message);
        assert_eq!(auth.0.verified.len(), 0);
    }

    #[test]
    fn bad_tokens_are_401_with_the_reason() {
        let auth = authenticator("");
        let cases = [
            (
                sign(
                    serde_json::json!({"sub": "a", "exp": in_an_hour()}),
                    "other-secret",
                ),
                "signature",
            ),
            (
                sign(serde_json::json!({"sub": "a", "exp": 1_000}), "s3cret"),
                "expired",
            ),
            (sign(serde_json::json!({"sub": "a"}), "s3cret"), "exp"),
            (
                sign(serde_json::json!({"exp": in_an_hour()}), "s3cret"),
                "no sub",
            ),
            ("not-a-jwt".to_string(), "malformed"),
        ];
        for (token, why) in cases {
            let err = auth.verify_blocking(&token).expect_err(why);
            assert_eq!(err.kind, crate::error::ErrorKind::Unauthenticated);
            assert!(
                err.message.contains(why),
                "{} should mention {why}",
                err.message
            );
        }
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let auth = authenticator("issuer = \"https://issuer.example\"\naudience = \"chatgate\"");
        let good = serde_json::json!({"sub": "a", "exp": in_an_hour(), "iss": "https://issuer.example", "aud": "chatgate"});
        assert!(auth.verify_blocking(&sign(good, "s3cret")).is_ok());
        let wrong_iss = serde_json::json!({"sub": "a", "exp": in_an_hour(), "iss": "https://evil", "aud": "chatgate"});
        assert!(
            auth.verify_blocking(&sign(wrong_iss, "s3cret"))
                .expect_err("iss")
                .message
                .contains("issuer")
        );
        let wrong_aud = serde_json::json!({"sub": "a", "exp": in_an_hour(), "iss": "https://issuer.example", "aud": "x"});
        assert!(
            auth.verify_blocking(&sign(wrong_aud, "s3cret"))
                .expect_err("aud")
                .message
                .contains("audience")
        );
        // And minted tokens carry both.
        assert!(
            auth.verify_blocking(
                &auth
                    .mint("a", false, Duration::from_secs(60))
                    .expect("mint")
            )
            .is_ok()
        );
    }
}

/// Every claim rule, one row each: the token's claims (signed with the configured secret) and whether it passes.
#[cfg(test)]
mod claim_rules {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    const SECRET: &str = "claim-rules-secret";

    fn authenticator(extra: &str) -> Authenticator {
        let config = Config::from_toml(&format!(
            "[auth]\njwt_secret = \"{SECRET}\"\nleeway_secs = 30\n{extra}\n[providers.mock]\n[models.default]\nprovider = \"mock\"\nmodel = \"m\""
        ))
        .expect("config");
        Authenticator::new(&config.auth)
    }

    fn token_with(header: Header, claims: &Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }

    fn token(claims: Value) -> String {
        token_with(Header::new(Algorithm::HS256), &claims, SECRET)
    }

    /// `Ok(())`, or the 401's message.
    fn check(auth: &Authenticator, token: &str) -> Result<(), String> {
        match auth.verify_blocking(token) {
            Ok(_) => Ok(()),
            Err(err) => {
                assert_eq!(err.kind, crate::error::ErrorKind::Unauthenticated);
                Err(err.message)
            }
        }
    }

    /// Each row's claims, signed: accepted (`None`), or refused with a message containing the given words.
    fn assert_rows(auth: &Authenticator, rows: &[(Value, Option<&str>)]) {
        for (claims, refused) in rows {
            let got = check(auth, &token(claims.clone()));
            match refused {
                None => assert_eq!(got, Ok(()), "{claims}"),
                Some(why) => {
                    let message = got.expect_err(&claims.to_string());
                    assert!(message.contains(why), "{claims}: {message}");
                }
            }
        }
    }

    #[test]
    fn exp_and_nbf_with_leeway() {
        let auth = authenticator("");
        let now = jsonwebtoken::get_current_timestamp();
        let cases: [(Value, Option<&str>); 8] = [
            (json!({"sub": "a", "exp": now + 60}), None),
            (json!({"sub": "a"}), Some("no exp claim")),
            (json!({"sub": "a", "exp": now - 120}), Some("expired")),
            // Within the 30 s leeway: a clock a little behind the issuer's still accepts it.
            (json!({"sub": "a", "exp": now - 10}), None),
            (
                json!({"sub": "a", "exp": now + 600, "nbf": now + 300}),
                Some("not valid yet"),
            ),
            (json!({"sub": "a", "exp": now + 600, "nbf": now + 10}), None),
            (
                json!({"sub": "a", "exp": now + 600, "nbf": now - 300}),
                None,
            ),
            (json!({"sub": "a", "exp": "tomorrow"}), Some("no exp claim")),
        ];
        assert_rows(&auth, &cases);
    }

    #[test]
    fn configured_issuer_and_audience_must_be_present_and_match() {
        let auth =
            authenticator("issuer = \"https://id.example/auth/v1\"\naudience = \"authenticated\"");
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let iss = "https://id.example/auth/v1";
        let cases: [(Value, Option<&str>); 7] = [
            (
                json!({"sub": "a", "exp": exp, "iss": iss, "aud": "authenticated"}),
                None,
            ),
            // An audience list containing ours (RFC 7519 §4.1.3).
            (
                json!({"sub": "a", "exp": exp, "iss": iss, "aud": ["other", "authenticated"]}),
                None,
            ),
            (
                json!({"sub": "a", "exp": exp, "aud": "authenticated"}),
                Some("no iss claim"),
            ),
            (
                json!({"sub": "a", "exp": exp, "iss": iss}),
                Some("no aud claim"),
            ),
            (json!({"sub": "a", "exp": exp}), Some("no ")),
            (
                json!({"sub": "a", "exp": exp, "iss": "https://evil.example", "aud": "authenticated"}),
                Some("issuer"),
            ),
            (
                json!({"sub": "a", "exp": exp, "iss": iss, "aud": "anon"}),
                Some("audience"),
            ),
        ];
        assert_rows(&auth, &cases);
        // Without them configured, neither claim is needed.
        let open = authenticator("");
        assert_eq!(
            check(&open, &token(json!({"sub": "a", "exp": exp}))),
            Ok(())
        );
    }

    #[test]
    fn forged_tokens_are_refused() {
        let auth = authenticator("");
        let claims = json!({"sub": "mallory", "exp": jsonwebtoken::get_current_timestamp() + 600, "role": "admin"});
        let good = token(claims.clone());
        assert_eq!(check(&auth, &good), Ok(()));
        let b64 = |v: &Value| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let (_, rest) = good.split_once('.').expect("jwt");
        let (_, signature) = rest.split_once('.').expect("jwt");
        let forged = [
            // `alg: none`, unsigned.
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims)
            ),
            // The right secret under another HMAC algorithm: the algorithm is pinned, not read from the header.
            token_with(Header::new(Algorithm::HS512), &claims, SECRET),
            // An RS256 header over an HMAC signature (the algorithm-confusion attack).
            format!(
                "{}.{}.{signature}",
                b64(&json!({"alg": "RS256", "typ": "JWT"})),
                b64(&claims)
            ),
            // Another secret.
            token_with(Header::new(Algorithm::HS256), &claims, "guessed"),
            // The payload changed under the original signature.
            format!(
                "{}.{}.{signature}",
                b64(&json!({"alg": "HS256", "typ": "JWT"})),
                b64(
                    &json!({"sub": "alice", "exp": jsonwebtoken::get_current_timestamp() + 600, "role": "admin"})
                )
            ),
            // Not a JWT at all, and an empty one.
            "a.b".to_string(),
            String::new(),
        ];
        for token in forged {
            assert!(check(&auth, &token).is_err(), "accepted {token}");
        }
        // No user: neither sub nor user_id, or an empty sub.
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        for claims in [json!({"exp": exp}), json!({"sub": "", "exp": exp})] {
            assert!(
                check(&auth, &token(claims))
                    .expect_err("no user")
                    .contains("no sub")
            );
        }
    }

    #[test]
    fn admin_claim_is_a_dotted_path_and_anonymous_needs_allowing() {
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let admin = |auth: &Authenticator, claims: Value| {
            auth.verify_blocking(&token(claims)).map(|u| u.admin)
        };
        // The default: `role`, a string or an array holding "admin".
        let auth = authenticator("");
        for (claims, is_admin) in [
            (json!({"sub": "a", "exp": exp, "role": "admin"}), true),
            (json!({"sub": "a", "exp": exp, "role": ["admin"]}), true),
            (
                json!({"sub": "a", "exp": exp, "role": "authenticated"}),
                false,
            ),
            (
                json!({"sub": "a", "exp": exp, "app_metadata": {"role": "admin"}}),
                false,
            ),
            (
                json!({"sub": "a", "exp": exp, "role": {"admin": true}}),
                false,
            ),
        ] {
            assert_eq!(admin(&auth, claims.clone()), Ok(is_admin), "{claims}");
        }
        let auth = authenticator("admin_claim = \"app_metadata.chatgate.role\"");
        for (claims, is_admin) in [
            (
                json!({"sub": "a", "exp": exp, "app_metadata": {"chatgate": {"role": "admin"}}}),
                true,
            ),
            (
                json!({"sub": "a", "exp": exp, "app_metadata": {"chatgate": "admin"}}),
                false,
            ),
            (
                json!({"sub": "a", "exp": exp, "app_metadata": {"role": "admin"}}),
                false,
            ),
            (json!({"sub": "a", "exp": exp, "role": "admin"}), false),
        ] {
            assert_eq!(admin(&auth, claims.clone()), Ok(is_admin), "{claims}");
        }
        // Minted admin tokens carry the role where this configuration looks for it.
        let minted = auth
            .mint("ops", true, Duration::from_secs(60))
            .expect("mint");
        assert_eq!(auth.verify_blocking(&minted).map(|u| u.admin), Ok(true));
        let minted = auth
            .mint("user", false, Duration::from_secs(60))
            .expect("mint");
        assert_eq!(auth.verify_blocking(&minted).map(|u| u.admin), Ok(false));
        // Anonymous sign-ins: 403 unless allowed; `is_anonymous: false` is an ordinary user.
        let anonymous = token(json!({"sub": "a", "exp": exp, "is_anonymous": true}));
        let err = authenticator("")
            .verify_blocking(&anonymous)
            .expect_err("anonymous");
        assert_eq!(err.kind, crate::error::ErrorKind::Forbidden);
        assert!(
            authenticator("allow_anonymous = true")
                .verify_blocking(&anonymous)
                .is_ok()
        );
        assert!(
            authenticator("")
                .verify_blocking(&token(
                    json!({"sub": "a", "exp": exp, "is_anonymous": false})
                ))
                .is_ok()
        );
    }

    #[test]
    fn supabase_url_is_shorthand_and_user_metadata_never_grants() {
        let config = |extra: &str| {
            Config::from_toml(&format!(
                "[auth]\n{extra}\n[providers.mock]\n[models.default]\nprovider = \"mock\"\nmodel = \"m\""
            ))
        };
        let auth = config("supabase_url = \"https://abc.supabase.co/\"")
            .expect("config")
            .auth;
        assert_eq!(
            (
                auth.jwks_url.as_str(),
                auth.issuer.as_str(),
                auth.audience.as_str(),
                auth.admin_claim.as_str()
            ),
            (
                "https://abc.supabase.co/auth/v1/.well-known/jwks.json",
                "https://abc.supabase.co/auth/v1",
                "authenticated",
                "app_metadata.role"
            )
        );
        assert!(
            !auth.hs256_enabled(),
            "the development secret never signs beside a key set"
        );
        // What is set explicitly stays.
        let auth = config("supabase_url = \"https://abc.supabase.co\"\naudience = \"chat\"\nadmin_claim = \"role\"\njwt_secret = \"legacy\"")
            .expect("config")
            .auth;
        assert_eq!(
            (auth.audience.as_str(), auth.admin_claim.as_str()),
            ("chat", "role")
        );
        assert!(auth.hs256_enabled());
        assert_eq!(config("").expect("config").auth.admin_claim, "role");
        for (extra, key) in [
            ("admin_claim = \"user_metadata.role\"", "auth.admin_claim"),
            ("admin_claim = \"app_metadata..role\"", "auth.admin_claim"),
            ("jwks_url = \"ftp://keys\"", "auth.jwks_url"),
            ("supabase_url = \"abc.supabase.co\"", "auth.supabase_url"),
        ] {
            match config(extra) {
                Err(crate::config::ConfigError::Invalid { key: got, .. }) => {
                    assert_eq!(got, key, "{extra}")
                }
                other => panic!("{extra}: {other:?}"),
            }
        }
    }
}
