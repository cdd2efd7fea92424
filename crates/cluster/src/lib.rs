//! Confab on several nodes sharing one Redis.
//!
//! - [`choose`]: pure placement decision: which live node takes a new room.
//! - [`load`]: the node's own load between heartbeats (egress rate, CPU).
//! - [`registry`]: the IO: the node's record and heartbeat, room claims (compare-and-set
//!   in Lua scripts), the cluster view for the admin API.
//! - [`error`]: what the callers branch on.
//!
//! Keys (one Redis, not Redis Cluster: the scripts touch several keys):
//!
//! | key | value | TTL |
//! |---|---|---|
//! | `confab:nodes` | set of node ids (pruned when a record is gone) | none |
//! | `confab:node:<id>` | the node's [`NodeInfo`] as JSON | `ttl_ms`, refreshed by the heartbeat |
//! | `confab:node:<id>:rooms` | set of the rooms claimed for the node | `ttl_ms` |
//! | `confab:room:<room>` | the owning node's id | `ttl_ms`, refreshed by the owner while the room exists |

pub mod cascade;
pub mod choose;
pub mod error;
pub mod load;
pub mod registry;

pub use choose::{Load, NodeInfo};
pub use error::ClusterError;
pub use registry::{Cluster, ClusterView, Identity, LocalState, LocalView, NodeView, Placement};

use serde::{Deserialize, Serialize};

/// How a new room's node is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementStrategy {
    /// The least loaded live node that is not draining.
    #[default]
    LeastLoaded,
    /// One of the two least loaded, at random: fewer rooms pile onto one node when many
    /// start at once.
    TwoRandomLeast,
}

/// How the nodes share rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterMode {
    /// Participants join the node they connect to; a room on several nodes is one
    /// meeting: its state shared through Redis, its media relayed between the nodes
    /// ([`cascade`]).
    #[default]
    Cascade,
    /// A room lives on one node; a client that connects elsewhere is redirected there.
    Redirect,
}

/// The `[cluster]` section. Without `redis_url` the server is a single node and none of
/// this is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://host:port/db` of the Redis shared by the nodes. Unset: a single node.
    pub redis_url: Option<String>,
    /// This node's id in the registry, logs and webhooks. Unset: random at each start.
    pub node_id: Option<String>,
    /// The WebSocket URL clients are redirected to for rooms on this node
    /// (`wss://node1.example.com/ws`). Unset: `ws://<http.bind>/ws`, which needs an
    /// explicit bind address.
    pub public_url: Option<String>,
    /// How often the node refreshes its record and its rooms' claims.
    pub heartbeat_ms: u64,
    /// How long a record or claim lives without a heartbeat: a node silent this long is
    /// gone and its rooms may be placed elsewhere.
    pub ttl_ms: u64,
    pub placement: PlacementStrategy,
    pub mode: ClusterMode,
    /// The secret every node of the cluster shares: it authenticates each relay packet
    /// (HMAC-SHA256). Needed in cascade mode; at least 16 characters.
    pub secret: Option<String>,
    /// UDP port of this node's relay link (media between nodes). 0: any free port (it
    /// is carried in every fact the node writes).
    pub relay_port: u16,
    /// Encrypt relay datagrams (AES-128-GCM, a key per node from the secret), not only
    /// authenticate them. A node that encrypts refuses cleartext relay datagrams.
    pub relay_encrypt: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            node_id: None,
            public_url: None,
            heartbeat_ms: 1_000,
            ttl_ms: 5_000,
            placement: PlacementStrategy::LeastLoaded,
            mode: ClusterMode::Cascade,
            secret: None,
            relay_port: 0,
            relay_encrypt: true,
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        self.redis_url.is_some()
    }

    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |m: &str| Err(ClusterError::Config(m.into()));
        if self.heartbeat_ms < 10 {
            return bad("cluster.heartbeat_ms must be at least 10");
        }
        if self.ttl_ms < 2 * self.heartbeat_ms {
            return bad("cluster.ttl_ms must be at least twice cluster.heartbeat_ms");
        }
        if let Some(url) = &self.redis_url {
            redis::Client::open(url.as_str())
                .map_err(|e| ClusterError::Config(format!("cluster.redis_url: {e}")))?;
        }
        if self.enabled()
            && self.mode == ClusterMode::Cascade
            && self.secret.as_ref().is_none_or(|s| s.len() < 16)
        {
            return bad(
                "cluster.secret (at least 16 characters, the same on every node) is needed in \
                 cascade mode, or set cluster.mode = \"redirect\"",
            );
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("ws://") || url.starts_with("wss://"))
        {
            return bad("cluster.public_url must be a ws:// or wss:// URL");
        }
        if let Some(id) = &self.node_id
            && (id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        {
            return bad("cluster.node_id: 1 to 64 characters among a-z A-Z 0-9 - _ .");
        }
        Ok(())
    }
}

/// A random node id (`n-` and 8 hex digits), for nodes configured without one.
pub fn random_node_id() -> String {
    format!("n-{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let ok = ClusterConfig {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            node_id: Some("node-1".into()),
            public_url: Some("wss://a.example.com/ws".into()),
            secret: Some("0123456789abcdef".into()),
            ..ClusterConfig::default()
        };
        assert!(ok.validate().is_ok());
        let redirect = ClusterConfig {
            secret: None,
            mode: ClusterMode::Redirect,
            ..ok.clone()
        };
        assert!(redirect.validate().is_ok(), "no secret needed to redirect");
        assert!(ClusterConfig::default().validate().is_ok());
        let cases: Vec<(ClusterConfig, &str)> = vec![
            (
                ClusterConfig {
                    ttl_ms: 1_500,
                    ..ok.clone()
                },
                "ttl_ms",
            ),
            (
                ClusterConfig {
                    secret: Some("too short".into()),
                    ..ok.clone()
                },
                "cluster.secret",
            ),
            (
                ClusterConfig {
                    redis_url: Some("http://x".into()),
                    ..ok.clone()
                },
                "redis_url",
            ),
            (
                ClusterConfig {
                    public_url: Some("http://a/ws".into()),
                    ..ok.clone()
                },
                "public_url",
            ),
            (
                ClusterConfig {
                    node_id: Some("a b".into()),
                    ..ok.clone()
                },
                "node_id",
            ),
        ];
        for (c, what) in cases {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn strategy_names() {
        let s: PlacementStrategy = serde_json::from_str("\"two_random_least\"").unwrap();
        assert_eq!(s, PlacementStrategy::TwoRandomLeast);
    }
}
