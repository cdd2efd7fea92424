//! Cascade: one room on several nodes (issue 15). Participants join the node they reach;
//! each node with participants of a room has copies of it (one per worker, see
//! `confab_sfu::room::copy`), and this transport carries what the copies tell each other
//! between nodes:
//!
//! - **Facts** (joins, leaves, tracks, chat, snapshots) go through Redis: one stream per
//!   room (`confab:room:<room>:facts`, `XADD`/`XREAD`, ordered per room, trimmed to
//!   [`STREAM_LEN`]); the copies present are a sorted set (`confab:room:<room>:copies`,
//!   `node/worker` scored by expiry, refreshed every heartbeat), from which a new copy
//!   learns how many snapshots to wait for.
//! - **Media and what flows back upstream** (layer wants, keyframe requests) go over a UDP
//!   relay link per pair of nodes ([`wire`]): each datagram authenticated with the cluster
//!   secret, media numbered per link and lost datagrams asked again (NACK, from a history
//!   of [`HISTORY`] datagrams), pings every second for the round-trip time and liveness.
//!
//! A node not heard on its link for `max(ttl, 3 s)` is gone: its copies leave every room
//! here (their participants vanish from the others' views) and relays to it stop. When it
//! is heard again (a partition healed), this node's copies say hello again and both sides
//! exchange snapshots. With Redis down, facts wait in a bounded queue and the reader
//! resumes where it was: existing rooms keep their media, and catch up on who joined
//! meanwhile when Redis returns.

mod facts;
mod link;
pub mod wire;

use confab_proto::{RoomId, TrackId};
use confab_sfu::Sfu;
use confab_sfu::room::Fact;
use confab_sfu::room::relay::Upstream;
use confab_sfu::worker::relay::{ALL_REMOTE, Frame, Link, REMOTE, decode_rtp, encode_rtp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use wire::{Datagram, Key, Kind};

const PREFIX: &str = "confab:room:";
/// Facts kept per room stream (a reader behind by more loses the oldest).
pub const STREAM_LEN: usize = 2_000;
/// Media datagrams kept per link for retransmission.
pub const HISTORY: usize = 2_048;
/// Facts queued while Redis is unreachable, at most (the oldest are dropped beyond).
const WRITE_QUEUE: usize = 20_000;
/// How often a link is pinged.
const PING_EVERY: Duration = Duration::from_secs(1);
/// How long a lost node is still pinged (to notice a partition healing).
const KEEP_TRYING: Duration = Duration::from_secs(300);
/// A missed datagram is asked again once; after this it is counted lost.
const MISSING_FOR: Duration = Duration::from_secs(1);

fn stream_key(room: &str) -> String {
    format!("{PREFIX}{room}:facts")
}

fn copies_key(room: &str) -> String {
    format!("{PREFIX}{room}:copies")
}

use crate::registry::unix_ms;

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Microseconds since a datagram was sent at `sent_us` by another node's clock; 0 when
/// the clocks disagree by more than a second (nothing is counted rather than nonsense).
fn hop_us(sent_us: u64) -> u64 {
    match unix_us().checked_sub(sent_us) {
        Some(d) if d <= 1_000_000 => d,
        _ => 0,
    }
}

/// A remote copy's key in this node's media plane: [`REMOTE`] | node slot << 8 | worker.
fn remote_key(slot: u32, worker: u8) -> usize {
    REMOTE | ((slot as usize) << 8) | worker as usize
}

fn split_key(key: usize) -> (u32, u8) {
    (((key & !REMOTE) >> 8) as u32, (key & 0xff) as u8)
}

/// What a stream entry carries.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Entry {
    Fact(Box<Fact>),
    Gone,
}

/// How the transport is set up.
#[derive(Debug, Clone)]
pub struct CascadeConfig {
    pub node: String,
    pub secret: String,
    pub redis_url: String,
    /// Where the relay socket binds, and the address other nodes send to.
    pub bind: SocketAddr,
    pub announce_ip: std::net::IpAddr,
    pub heartbeat: Duration,
    pub ttl: Duration,
    /// Seal relay datagrams (AES-128-GCM) rather than only authenticate them.
    pub encrypt: bool,
}

/// One relay link as the admin API shows it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LinkStats {
    /// The node at the other end.
    pub node: String,
    pub addr: Option<String>,
    pub alive: bool,
    /// Rooms with copies on both ends.
    pub rooms: usize,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// Media datagrams sent again on a NACK.
    pub retransmitted: u64,
    /// Media datagrams found missing, and of those, received later (retransmitted).
    pub missing: u64,
    pub recovered: u64,
    /// Round-trip time of the last ping, in microseconds.
    pub rtt_us: Option<u64>,
}

/// Counters of the whole transport.
#[derive(Debug, Default)]
pub struct CascadeCounters {
    pub facts_written: AtomicU64,
    pub facts_read: AtomicU64,
    /// Facts dropped because the queue for Redis was full.
    pub facts_dropped: AtomicU64,
    /// Datagrams refused: not ours, not authentic, malformed.
    pub refused: AtomicU64,
    /// Relay datagrams the socket could not take (dropped).
    pub send_dropped: AtomicU64,
    /// Nodes declared gone (their link silent).
    pub nodes_lost: AtomicU64,
}

struct Shared {
    /// Node ids by slot (remote copies' keys name the slot).
    nodes: Mutex<Vec<String>>,
    /// Drills and tests: the relay link drops everything, both ways (a partition).
    partitioned: std::sync::atomic::AtomicBool,
    links: Mutex<Vec<LinkStats>>,
    counters: CascadeCounters,
    relay: SocketAddr,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A handle on the running transport: cheap to clone.
#[derive(Clone)]
pub struct Cascade {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Cascade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cascade")
            .field("relay", &self.shared.relay)
            .finish()
    }
}

impl Cascade {
    /// The relay link's announced address (published in the node's record).
    pub fn relay_addr(&self) -> SocketAddr {
        self.shared.relay
    }

    /// The relay links to other nodes, as of the last tick.
    pub fn links(&self) -> Vec<LinkStats> {
        self.shared
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The node and worker of a remote copy's key (`Elsewhere::copy`).
    pub fn locate(&self, key: usize) -> Option<(String, u32)> {
        if key < REMOTE || key == ALL_REMOTE {
            return None;
        }
        let (slot, worker) = split_key(key);
        let nodes = self.shared.nodes.lock().unwrap_or_else(|e| e.into_inner());
        Some((nodes.get(slot as usize)?.clone(), worker as u32))
    }

    /// Cuts (or restores) this node's relay link to every other node, as a network
    /// partition would: everything sent or received on it is dropped, facts through Redis
    /// still flow. For failure drills and tests.
    pub fn set_partitioned(&self, on: bool) {
        self.shared.partitioned.store(on, Ordering::Relaxed);
    }

    pub fn counters(&self) -> &CascadeCounters {
        &self.shared.counters
    }

    /// Stops at once: nothing more is told or relayed (a graceful stop calls this after
    /// the media plane has told its rooms who left).
    pub fn stop(&self) {
        for t in self
            .shared
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// Binds the relay socket and starts the transport: `from_sfu` is what the media plane's
/// copies send to other nodes (the receiver of [`Sfu::start_cascaded`]'s channel).
pub async fn start(
    config: CascadeConfig,
    sfu: Sfu,
    from_sfu: mpsc::Receiver<Link>,
) -> Result<Cascade, crate::ClusterError> {
    let bad = |e: String| crate::ClusterError::Config(e);
    let socket = UdpSocket::bind(config.bind)
        .await
        .map_err(|e| bad(format!("binding the relay socket on {}: {e}", config.bind)))?;
    let local = socket
        .local_addr()
        .map_err(|e| bad(format!("relay socket: {e}")))?;
    let relay = SocketAddr::new(config.announce_ip, local.port());
    let client = redis::Client::open(config.redis_url.as_str())
        .map_err(|e| bad(format!("cluster.redis_url: {e}")))?;
    let shared = Arc::new(Shared {
        nodes: Mutex::new(Vec::new()),
        partitioned: std::sync::atomic::AtomicBool::new(false),
        links: Mutex::new(Vec::new()),
        counters: CascadeCounters::default(),
        relay,
        tasks: Mutex::new(Vec::new()),
    });
    let reading: facts::Reading = Arc::new(Mutex::new(HashMap::new()));
    let (write_tx, write_rx) = mpsc::channel(4_096);
    let (entries_tx, entries_rx) = mpsc::channel(4_096);
    let writer = facts::Writer {
        node: config.node.clone(),
        relay: relay.to_string(),
        client: client.clone(),
        sfu: sfu.clone(),
        reading: reading.clone(),
        ttl: config.ttl,
        heartbeat: config.heartbeat,
        shared: shared.clone(),
    };
    let reader = facts::Reader {
        node: config.node.clone(),
        client,
        reading,
        shared: shared.clone(),
    };
    let dead_after = config.ttl.max(Duration::from_secs(3));
    let key = if config.encrypt {
        Key::encrypting(config.secret.as_bytes(), &config.node)
    } else {
        Key::new(config.secret.as_bytes())
    };
    let link = link::LinkLoop::new(
        config.node.clone(),
        key,
        socket,
        sfu,
        write_tx,
        dead_after,
        shared.clone(),
    );
    let tasks = vec![
        tokio::spawn(writer.run(write_rx)),
        tokio::spawn(reader.run(entries_tx)),
        tokio::spawn(link.run(from_sfu, entries_rx)),
    ];
    *shared.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
    tracing::info!(%relay, "cascade: relay link listening");
    Ok(Cascade { shared })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_keys_round_trip_and_stay_apart_from_workers() {
        for (slot, w) in [(0, 0), (1, 3), (4_000_000, 255)] {
            let k = remote_key(slot, w);
            assert!(k >= REMOTE && k != ALL_REMOTE);
            assert_eq!(split_key(k), (slot, w));
        }
    }
}
