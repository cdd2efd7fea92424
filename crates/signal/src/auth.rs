//! Access tokens: JWTs naming a room, an identity, a display name and what the bearer may
//! do ([`Grants`]), signed with HS256 (a shared secret) or ES256 (a key pair), with an
//! expiry. `confab token` mints them; a join presents one; the admin API accepts one with
//! `room_admin` for its room.
//!
//! Without `auth.required` the server runs in open dev mode: a join without a token gets
//! every grant but `room_admin`; a join with one still has it verified.
//!
//! A token may carry an id (`jti`; `confab token` puts a random one in). The admin API
//! revokes an id until the token's expiry: the token is then refused like an invalid one.
//! Revocations live in this process's memory (a restart, or another node of a cluster,
//! does not know them), bounded by [`MAX_REVOKED`], and are forgotten once the token has
//! expired anyway.

use confab_proto::signal::Grants;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Revoked token ids held at once.
pub const MAX_REVOKED: usize = 100_000;

/// The `[auth]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Refuse joins without a valid token. Off: open dev mode (logged loudly at start).
    pub required: bool,
    /// HS256 key of the tokens.
    pub secret: String,
    /// ES256 instead: PEM file of the public key that verifies tokens (and, for
    /// `confab token`, `private_key_pem` signs them).
    pub public_key_pem: Option<PathBuf>,
    pub private_key_pem: Option<PathBuf>,
    /// Refuse tokens without an id (`jti`): only tokens that can be revoked are taken.
    pub require_jti: bool,
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Identity: who the bearer is.
    pub sub: String,
    /// Display name; the join's `name` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The room, or `*` for any room.
    pub room: String,
    #[serde(default)]
    pub grants: Grants,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The token's id, by which it can be revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

impl Claims {
    pub fn allows_room(&self, room: &str) -> bool {
        self.room == "*" || self.room == room
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("this server requires an access token: join with `token`")]
    Missing,
    #[error("access tokens are not configured on this server (auth.secret is empty)")]
    NotConfigured,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not valid: {0}")]
    Invalid(String),
    #[error("the access token is for room {token_room:?}, not {room:?}")]
    WrongRoom { token_room: String, room: String },
    #[error("cannot read key {0}: {1}")]
    Key(PathBuf, String),
    #[error("the access token was revoked")]
    Revoked,
    #[error("this server takes only access tokens with an id (jti)")]
    NoTokenId,
    #[error("too many revoked tokens held at once ({MAX_REVOKED}); try again when some expire")]
    TooManyRevoked,
}

/// Verifies and mints tokens with the configured keys. Clones share the revocations.
#[derive(Clone)]
pub struct Verifier {
    required: bool,
    require_jti: bool,
    decoding: Option<(DecodingKey, Algorithm)>,
    /// Revoked token ids, until the token's expiry (Unix seconds).
    revoked: Arc<Mutex<confab_sfu::expiring::Expiring<String, u64>>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("required", &self.required)
            .field("configured", &self.decoding.is_some())
            .finish()
    }
}

impl Verifier {
    pub fn new(config: &AuthConfig) -> Result<Verifier, AuthError> {
        let decoding = if let Some(path) = &config.public_key_pem {
            let pem =
                std::fs::read(path).map_err(|e| AuthError::Key(path.clone(), e.to_string()))?;
            let key = DecodingKey::from_ec_pem(&pem)
                .map_err(|e| AuthError::Key(path.clone(), e.to_string()))?;
            Some((key, Algorithm::ES256))
        } else if !config.secret.is_empty() {
            Some((
                DecodingKey::from_secret(config.secret.as_bytes()),
                Algorithm::HS256,
            ))
        } else {
            None
        };
        if config.required && decoding.is_none() {
            return Err(AuthError::NotConfigured);
        }
        Ok(Verifier {
            required: config.required,
            require_jti: config.require_jti,
            decoding,
            revoked: Arc::new(Mutex::new(confab_sfu::expiring::Expiring::new(MAX_REVOKED))),
        })
    }

    /// Refuses the token `jti` until `exp` (its expiry, Unix seconds; after it the token
    /// is refused as expired anyway). A token already expired needs nothing held.
    pub fn revoke(&self, jti: &str, exp: u64) -> Result<(), AuthError> {
        let now = now_secs();
        if exp <= now {
            return Ok(());
        }
        let held = self
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(jti.to_string(), exp, now);
        if held {
            Ok(())
        } else {
            Err(AuthError::TooManyRevoked)
        }
    }

    /// The revoked token ids still held, with the expiry each is held until.
    pub fn revoked(&self) -> Vec<(String, u64)> {
        let now = now_secs();
        let mut all: Vec<(String, u64)> = self
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live(now)
            .map(|(k, t)| (k.clone(), t))
            .collect();
        all.sort();
        all
    }

    /// Open dev mode: no token needed.
    pub fn is_open(&self) -> bool {
        !self.required
    }

    /// The claims of `token`, checked: signature, expiry (no leeway), not-before.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let Some((key, alg)) = &self.decoding else {
            return Err(AuthError::NotConfigured);
        };
        let mut v = Validation::new(*alg);
        v.leeway = 0;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, key, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        match &claims.jti {
            None if self.require_jti => Err(AuthError::NoTokenId),
            Some(jti)
                if self
                    .revoked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .until(jti, now_secs())
                    .is_some() =>
            {
                Err(AuthError::Revoked)
            }
            _ => Ok(claims),
        }
    }

    /// What a join to `room` with `token` may do: the token's claims (checked, and for
    /// this room), or, in open mode without a token, everything but `room_admin`.
    pub fn admit(&self, token: Option<&str>, room: &str) -> Result<Option<Claims>, AuthError> {
        match token {
            None if self.required => Err(AuthError::Missing),
            None => Ok(None),
            Some(t) => {
                let claims = self.verify(t)?;
                if !claims.allows_room(room) {
                    return Err(AuthError::WrongRoom {
                        token_room: claims.room,
                        room: room.to_string(),
                    });
                }
                Ok(Some(claims))
            }
        }
    }
}

/// Signs `claims` with the configured key (ES256 private key, else the HS256 secret).
pub fn mint(config: &AuthConfig, claims: &Claims) -> Result<String, AuthError> {
    let (key, alg) = if let Some(path) = &config.private_key_pem {
        let pem = std::fs::read(path).map_err(|e| AuthError::Key(path.clone(), e.to_string()))?;
        let key = EncodingKey::from_ec_pem(&pem)
            .map_err(|e| AuthError::Key(path.clone(), e.to_string()))?;
        (key, Algorithm::ES256)
    } else if !config.secret.is_empty() {
        (
            EncodingKey::from_secret(config.secret.as_bytes()),
            Algorithm::HS256,
        )
    } else {
        return Err(AuthError::NotConfigured);
    };
    jsonwebtoken::encode(&Header::new(alg), claims, &key)
        .map_err(|e| AuthError::Invalid(e.to_string()))
}

/// A fresh random token id (`jti`): 128 bits, hex.
pub fn new_token_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: &str, required: bool) -> AuthConfig {
        AuthConfig {
            required,
            secret: secret.into(),
            ..Default::default()
        }
    }

    fn claims(room: &str, exp: u64) -> Claims {
        Claims {
            sub: "ada".into(),
            name: Some("Ada".into()),
            room: room.into(),
            grants: Grants {
                can_publish: false,
                ..Grants::default()
            },
            exp,
            nbf: None,
            iat: Some(now_secs()),
            jti: None,
        }
    }

    #[test]
    fn a_minted_token_verifies_with_its_grants() {
        let c = config("s3cret", true);
        let token = mint(&c, &claims("standup", now_secs() + 60)).unwrap();
        let v = Verifier::new(&c).unwrap();
        let got = v.admit(Some(&token), "standup").unwrap().unwrap();
        assert_eq!(got.sub, "ada");
        assert!(!got.grants.can_publish && got.grants.can_chat);
    }

    #[test]
    fn bad_tokens_are_refused_for_their_reason() {
        let c = config("s3cret", true);
        let v = Verifier::new(&c).unwrap();
        let good = mint(&c, &claims("standup", now_secs() + 60)).unwrap();
        assert_eq!(v.admit(None, "standup"), Err(AuthError::Missing));
        assert!(matches!(
            v.admit(Some(&good), "other"),
            Err(AuthError::WrongRoom { .. })
        ));
        let expired = mint(&c, &claims("standup", now_secs() - 10)).unwrap();
        assert_eq!(v.admit(Some(&expired), "standup"), Err(AuthError::Expired));
        let forged = mint(&config("other", true), &claims("standup", now_secs() + 60)).unwrap();
        assert!(matches!(
            v.admit(Some(&forged), "standup"),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            v.admit(Some("garbage"), "standup"),
            Err(AuthError::Invalid(_))
        ));
        // A token whose payload was edited (room) no longer matches its signature.
        let parts: Vec<&str> = good.split('.').collect();
        let payload = base64_url(br#"{"sub":"ada","room":"*","exp":99999999999}"#);
        let edited = format!("{}.{payload}.{}", parts[0], parts[2]);
        assert!(matches!(
            v.admit(Some(&edited), "x"),
            Err(AuthError::Invalid(_))
        ));
        // Any room.
        let any = mint(&c, &claims("*", now_secs() + 60)).unwrap();
        assert!(v.admit(Some(&any), "whatever").is_ok());
    }

    #[test]
    fn open_mode_admits_without_a_token_and_still_checks_one() {
        let v = Verifier::new(&config("s3cret", false)).unwrap();
        assert_eq!(v.admit(None, "r"), Ok(None));
        assert!(v.admit(Some("garbage"), "r").is_err());
        let open = Verifier::new(&config("", false)).unwrap();
        assert_eq!(open.admit(Some("x"), "r"), Err(AuthError::NotConfigured));
        assert_eq!(
            Verifier::new(&config("", true)).unwrap_err(),
            AuthError::NotConfigured
        );
    }

    #[test]
    fn revoked_token_ids_are_refused_until_the_token_expires() {
        let c = config("s3cret", true);
        let v = Verifier::new(&c).unwrap();
        let exp = now_secs() + 60;
        let with = |jti: &str| {
            let mut cl = claims("r", exp);
            cl.jti = Some(jti.into());
            mint(&c, &cl).unwrap()
        };
        let (a, b) = (with("jti-a"), with("jti-b"));
        let none = mint(&c, &claims("r", exp)).unwrap();
        assert!(v.admit(Some(&a), "r").is_ok());
        v.revoke("jti-a", exp).unwrap();
        assert_eq!(v.admit(Some(&a), "r"), Err(AuthError::Revoked));
        // A clone (the admin API's, the sessions') shares the revocations.
        assert_eq!(v.clone().verify(&a), Err(AuthError::Revoked));
        assert!(v.admit(Some(&b), "r").is_ok());
        assert!(v.admit(Some(&none), "r").is_ok());
        assert_eq!(v.revoked(), vec![("jti-a".to_string(), exp)]);
        // An expiry already past holds nothing: the token is refused as expired anyway.
        v.revoke("jti-old", now_secs() - 1).unwrap();
        assert_eq!(v.revoked().len(), 1);
        // Tokens without an id, where ids are required.
        let strict = Verifier::new(&AuthConfig {
            require_jti: true,
            ..c.clone()
        })
        .unwrap();
        assert_eq!(strict.admit(Some(&none), "r"), Err(AuthError::NoTokenId));
        assert!(strict.admit(Some(&b), "r").is_ok());
        assert_ne!(new_token_id(), new_token_id());
        assert_eq!(new_token_id().len(), 32);
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }
}
