//! Bearer JWT authentication, deny by default.
//!
//! Tokens are HS256 JWTs (RFC 7519) verified with jsonwebtoken: `exp` is required and checked, `nbf` is checked
//! when present (both with `leeway_secs`), and when `issuer` / `audience` are configured the token must carry
//! that `iss` / `aud` (a token without the claim is refused, not just one with another value). The user id is
//! `sub`, or `user_id` when `sub` is absent (the seeds' tokens). Admin routes need `role: "admin"` (or
//! `"admin"` in `roles`, or `app_metadata.role` / `app_metadata.roles` as Supabase writes custom claims). The
//! HTTP side (the bearer header, the public routes) is `api::auth`.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::AuthConfig;
use crate::error::Error;

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

#[derive(Debug, Deserialize)]
struct Claims {
    exp: Option<u64>,
    sub: Option<String>,
    user_id: Option<Value>,
    role: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    app_metadata: Option<Value>,
}

impl Claims {
    fn user_id(&self) -> Option<String> {
        if let Some(sub) = self.sub.as_deref().filter(|s| !s.is_empty()) {
            return Some(sub.to_string());
        }
        match &self.user_id {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    }

    fn is_admin(&self) -> bool {
        let meta = self.app_metadata.as_ref();
        self.role.as_deref() == Some("admin")
            || self.roles.iter().any(|r| r == "admin")
            || meta.and_then(|m| m.get("role")).and_then(Value::as_str) == Some("admin")
            || meta
                .and_then(|m| m.get("roles"))
                .and_then(Value::as_array)
                .is_some_and(|roles| roles.iter().any(|r| r.as_str() == Some("admin")))
    }
}

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Verifies (and, for the CLI, mints) tokens with the configured secret.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Self {
        let secret = config.jwt_secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway_secs;
        validation.validate_nbf = true;
        let issuer = Some(config.issuer.clone()).filter(|s| !s.is_empty());
        let audience = Some(config.audience.clone()).filter(|s| !s.is_empty());
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
        Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
            issuer,
            audience,
        }
    }

    /// Verifies a token.
    ///
    /// # Errors
    /// 401 `unauthorized` saying why (expired, not valid yet, bad signature, wrong or missing issuer/audience,
    /// no user id).
    pub fn verify(&self, token: &str) -> Result<AuthUser, Error> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                if let ErrorKind::MissingRequiredClaim(claim) = e.kind() {
                    return Error::unauthorized(format!("the token has no {claim} claim"));
                }
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::InvalidSignature => "the token's signature is invalid",
                    ErrorKind::InvalidIssuer => "the token's issuer is not accepted",
                    ErrorKind::InvalidAudience => "the token's audience is not accepted",
                    ErrorKind::InvalidAlgorithm => {
                        "the token's algorithm is not accepted (HS256 expected)"
                    }
                    ErrorKind::ImmatureSignature => "the token is not valid yet",
                    _ => "the token is malformed",
                };
                Error::unauthorized(why)
            })?;
        let user_id = data
            .claims
            .user_id()
            .ok_or_else(|| Error::unauthorized("the token has no sub or user_id"))?;
        Ok(AuthUser {
            user_id,
            admin: data.claims.is_admin(),
            expires_at: data.claims.exp,
        })
    }

    /// Signs a token for `sub` valid for `ttl`, with `role: "admin"` when `admin`; `iss`/`aud` as configured.
    ///
    /// # Errors
    /// When signing fails (it does not with an HMAC key).
    pub fn mint(
        &self,
        sub: &str,
        admin: bool,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = MintClaims {
            sub,
            iat: now,
            exp: now + ttl.as_secs(),
            role: admin.then_some("admin"),
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
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
            .verify(
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
            .verify(
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
            .verify(&sign(
                serde_json::json!({"user_id": 42, "exp": in_an_hour()}),
                "s3cret",
            ))
            .expect("valid");
        assert_eq!(user.user_id, "42");
        let supabase = serde_json::json!({"sub": "u-1", "aud": "authenticated", "role": "authenticated",
            "app_metadata": {"role": "admin"}, "exp": in_an_hour()});
        let user = auth.verify(&sign(supabase, "s3cret")).expect("valid");
        assert_eq!((user.user_id.as_str(), user.admin), ("u-1", true));
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
            let err = auth.verify(&token).expect_err(why);
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
        assert!(auth.verify(&sign(good, "s3cret")).is_ok());
        let wrong_iss = serde_json::json!({"sub": "a", "exp": in_an_hour(), "iss": "https://evil", "aud": "chatgate"});
        assert!(
            auth.verify(&sign(wrong_iss, "s3cret"))
                .expect_err("iss")
                .message
                .contains("issuer")
        );
        let wrong_aud = serde_json::json!({"sub": "a", "exp": in_an_hour(), "iss": "https://issuer.example", "aud": "x"});
        assert!(
            auth.verify(&sign(wrong_aud, "s3cret"))
                .expect_err("aud")
                .message
                .contains("audience")
        );
        // And minted tokens carry both.
        assert!(
            auth.verify(
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
        match auth.verify(token) {
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
            (json!({"sub": "a", "exp": "tomorrow"}), Some("malformed")),
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
}
