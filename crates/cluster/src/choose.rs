//! Which node takes a new room: a pure decision over the registry's view of the nodes.
//!
//! A node's load for placement is the number of rooms it owns plus its participants. The
//! room count comes from the claims themselves (counted in Redis when the decision is
//! made), so a burst of new rooms spreads even between two heartbeats; participants, egress
//! and CPU come from the node's last heartbeat.

use crate::PlacementStrategy;
use serde::{Deserialize, Serialize};

/// What a node publishes about its load at each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Rooms open on the node.
    pub rooms: usize,
    pub participants: usize,
    /// Datagrams sent per second (media egress), over the last heartbeat period.
    pub egress_pps: u64,
    /// CPU used by the node's process, in percent of one core, over the last heartbeat
    /// period (Linux only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pct: Option<f32>,
}

/// A node as it registers itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    /// The signaling WebSocket clients are sent to (`ws://host:port/ws`).
    pub url: String,
    /// The announced media addresses (UDP), one per worker.
    pub media: Vec<String>,
    /// Draining (SIGTERM): keeps its meetings, takes no new rooms.
    pub draining: bool,
    pub load: Load,
    /// Milliseconds since the Unix epoch.
    pub started_at: u64,
    pub updated_at: u64,
}

/// A live node with the number of room claims it holds, as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub info: NodeInfo,
    pub claims: usize,
}

impl Candidate {
    /// Lower is less loaded: (rooms owned + participants, egress, id).
    fn key(&self) -> (usize, u64, &str) {
        (
            self.claims + self.info.load.participants,
            self.info.load.egress_pps,
            self.info.id.as_str(),
        )
    }
}

/// The node that should take a new room, or `None` when no node takes new rooms (all are
/// draining, or none is registered). `coin` picks between the two least loaded for
/// [`PlacementStrategy::TwoRandomLeast`].
pub fn choose(nodes: &[Candidate], strategy: PlacementStrategy, coin: bool) -> Option<&Candidate> {
    let mut open: Vec<&Candidate> = nodes.iter().filter(|n| !n.info.draining).collect();
    open.sort_by(|a, b| a.key().cmp(&b.key()));
    match strategy {
        PlacementStrategy::LeastLoaded => open.first().copied(),
        PlacementStrategy::TwoRandomLeast => {
            let pick = if coin && open.len() > 1 { 1 } else { 0 };
            open.get(pick).copied()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, claims: usize, participants: usize, pps: u64, draining: bool) -> Candidate {
        Candidate {
            info: NodeInfo {
                id: id.into(),
                url: format!("ws://{id}/ws"),
                media: vec![],
                draining,
                load: Load {
                    rooms: claims,
                    participants,
                    egress_pps: pps,
                    cpu_pct: None,
                },
                started_at: 0,
                updated_at: 0,
            },
            claims,
        }
    }

    #[test]
    fn choices() {
        use PlacementStrategy::*;
        let a = node("a", 2, 10, 0, false);
        let b = node("b", 1, 3, 0, false);
        let c = node("c", 0, 0, 0, true);
        let d = node("d", 1, 3, 500, false);
        let e = node("e", 5, 0, 0, false);
        // (nodes, strategy, coin, expected)
        let cases: &[(&[&Candidate], PlacementStrategy, bool, Option<&str>)] = &[
            (&[], LeastLoaded, false, None),
            (&[&c], LeastLoaded, false, None),
            (&[&c], TwoRandomLeast, true, None),
            (&[&a, &b], LeastLoaded, false, Some("b")),
            (&[&a, &b, &c], LeastLoaded, false, Some("b")),
            // Equal rooms + participants: less egress wins.
            (&[&d, &b], LeastLoaded, false, Some("b")),
            // Rooms count as much as participants: e (5 + 0) beats a (2 + 10).
            (&[&a, &e], LeastLoaded, false, Some("e")),
            (&[&a, &b, &d], TwoRandomLeast, false, Some("b")),
            (&[&a, &b, &d], TwoRandomLeast, true, Some("d")),
            // One open node: the coin does not matter.
            (&[&a, &c], TwoRandomLeast, true, Some("a")),
        ];
        for (i, (nodes, strategy, coin, want)) in cases.iter().enumerate() {
            let nodes: Vec<Candidate> = nodes.iter().map(|n| (*n).clone()).collect();
            let got = choose(&nodes, *strategy, *coin).map(|n| n.info.id.as_str());
            assert_eq!(got, *want, "case {i}");
        }
    }
}
