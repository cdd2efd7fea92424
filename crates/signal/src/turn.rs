//! TURN credentials for the participants (issue 16): the TURN REST API scheme that coturn
//! implements with `use-auth-secret`. For each participant the server mints a username
//! `<expiry, Unix seconds>:<participant id>` and a password `base64(HMAC-SHA1(secret,
//! username))`, and sends them in `joined` as ICE servers; the TURN server checks the MAC
//! with the same secret and refuses once the expiry has passed. Nothing is stored: a leaked
//! credential dies at its expiry.

use confab_proto::IceServer;
use serde::{Deserialize, Serialize};

/// The `[turn]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// TURN (and STUN) URLs given to clients, e.g.
    /// `["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"]`.
    /// Empty: no ICE servers are sent.
    pub urls: Vec<String>,
    /// The TURN server's `static-auth-secret`. Unset: the URLs are sent without
    /// credentials (STUN only).
    pub secret: Option<String>,
    /// How long a minted credential is valid, seconds (0: one day).
    pub ttl_s: u64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            secret: None,
            ttl_s: 86_400,
        }
    }
}

impl TurnConfig {
    pub fn validate(&self) -> Result<(), String> {
        for u in &self.urls {
            if !(u.starts_with("turn:") || u.starts_with("turns:") || u.starts_with("stun:")) {
                return Err(format!(
                    "turn.urls: {u:?} is not a turn:, turns: or stun: URL"
                ));
            }
        }
        if self.secret.as_ref().is_some_and(|s| s.is_empty()) {
            return Err("turn.secret is empty".into());
        }
        Ok(())
    }

    /// The ICE servers for participant `who`, valid from `now_unix` (seconds).
    pub fn ice_servers(&self, who: &str, now_unix: u64) -> Vec<IceServer> {
        if self.urls.is_empty() {
            return Vec::new();
        }
        let ttl = if self.ttl_s == 0 { 86_400 } else { self.ttl_s };
        let (username, credential) = match &self.secret {
            Some(secret) => {
                let username = format!("{}:{who}", now_unix + ttl);
                let credential = credential(secret.as_bytes(), &username);
                (Some(username), Some(credential))
            }
            None => (None, None),
        };
        vec![IceServer {
            urls: self.urls.clone(),
            username,
            credential,
        }]
    }
}

/// `base64(HMAC-SHA1(secret, username))`: SHA-1 because that is what the TURN REST API
/// scheme (and coturn) specifies; HMAC-SHA1 is not weakened by SHA-1's collisions.
pub fn credential(secret: &[u8], username: &str) -> String {
    use base64::Engine;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = ring::hmac::sign(&key, username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_turn_rest_scheme() {
        // Computed independently: python3 hmac.new(b"north-wind", b"1735689600:PA_ada",
        // hashlib.sha1), base64.
        assert_eq!(
            credential(b"north-wind", "1735689600:PA_ada"),
            "Mnwf8K6grE46YjYlH/As4AITpjk="
        );
        let c = TurnConfig {
            urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            secret: Some("north-wind".into()),
            ttl_s: 3_600,
        };
        let s = c.ice_servers("PA_ada", 1_735_686_000);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].username.as_deref(), Some("1735689600:PA_ada"));
        assert_eq!(
            s[0].credential.as_deref(),
            Some("Mnwf8K6grE46YjYlH/As4AITpjk=")
        );
        assert!(TurnConfig::default().ice_servers("PA_ada", 0).is_empty());
    }

    #[test]
    fn bad_settings_are_named() {
        let c = TurnConfig {
            urls: vec!["http://x".into()],
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("turn.urls"));
    }
}
