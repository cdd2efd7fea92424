//! Access tokens: JWTs naming a room, an identity, a display name and what the bearer may
//! do ([`Grants`]), signed with HS256 (a shared secret) or ES256 (a key pair), with an
//! expiry. `confab token` mints them; a join presents one; the admin API accepts one with
//! `room_admin` for its room.
//!
//! Without `auth.required` the server runs in open dev mode: a join without a token gets
//! every grant but `room_admin`; a join with one still has it verified.

use confab_proto::signal::Grants;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
}

/// Verifies and mints tokens with the configured keys.
#[derive(Clone)]
pub struct Verifier {
    required: bool,
    decoding: Option<(DecodingKey, Algorithm)>,
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
            decoding,
        })
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
        jsonwebtoken::decode::<Claims>(token, key, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })
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

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }
}
