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
    /// The embedded TURN server: its UDP and TCP port (0: off). With it on and `urls`
    /// empty, clients are given its URLs; with `secret` unset, one is drawn at start.
    pub port: u16,
    /// TURN over TLS on this TCP port too (0: off; 443 or 5349), with the HTTP
    /// certificate (`http.tls_cert`, `http.tls_key`).
    pub tls_port: u16,
    /// The name or address clients reach the embedded server at (the TLS certificate's
    /// name for `turns:`). Default: the media announce address.
    pub host: Option<String>,
    /// The address relayed candidates are given (the relay sockets bind the media bind
    /// address). Default: the media announce address.
    pub relay_ip: Option<std::net::IpAddr>,
    /// Allocations the embedded server holds at most (each is a UDP socket).
    pub max_allocations: usize,
    /// Addresses (besides this node's media addresses) the embedded server may relay to.
    pub allowed_peers: Vec<std::net::SocketAddr>,
}

/// What the embedded TURN server did and refused (for `/metrics`).
#[derive(Debug, Default)]
pub struct TurnStats {
    /// Allocations open now.
    pub allocations: std::sync::atomic::AtomicI64,
    /// Requests with an unknown, malformed or expired username (or a wrong password:
    /// the TURN library answers those itself, without telling; they show as no allocation).
    pub auth_refused: std::sync::atomic::AtomicU64,
    /// Allocations refused over `max_allocations`.
    pub allocations_refused: std::sync::atomic::AtomicU64,
    /// Datagrams a client asked to relay to an address it may not reach (and datagrams
    /// from such addresses), dropped.
    pub forbidden_peers: std::sync::atomic::AtomicU64,
    /// TURN TCP/TLS connections closed for bad framing, a failed TLS handshake or
    /// silence.
    pub tcp_refused: std::sync::atomic::AtomicU64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            secret: None,
            ttl_s: 86_400,
            port: 0,
            tls_port: 0,
            host: None,
            relay_ip: None,
            max_allocations: 1_000,
            allowed_peers: Vec::new(),
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
        if self.tls_port != 0 && self.port == 0 {
            return Err("turn.tls_port needs the embedded server (turn.port)".into());
        }
        if self.port != 0 && self.port == self.tls_port {
            return Err("turn.port and turn.tls_port must differ".into());
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
            ..Default::default()
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
        let tls_alone = TurnConfig {
            tls_port: 5349,
            ..Default::default()
        };
        assert!(tls_alone.validate().unwrap_err().contains("turn.port"));
        let same = TurnConfig {
            port: 3478,
            tls_port: 3478,
            ..Default::default()
        };
        assert!(same.validate().unwrap_err().contains("must differ"));
    }
}
