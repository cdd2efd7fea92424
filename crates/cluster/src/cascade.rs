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

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
    let reading: Reading = Arc::new(Mutex::new(HashMap::new()));
    let (write_tx, write_rx) = mpsc::channel(4_096);
    let (entries_tx, entries_rx) = mpsc::channel(4_096);
    let writer = Writer {
        node: config.node.clone(),
        relay: relay.to_string(),
        client: client.clone(),
        sfu: sfu.clone(),
        reading: reading.clone(),
        ttl: config.ttl,
        heartbeat: config.heartbeat,
        shared: shared.clone(),
    };
    let reader = Reader {
        node: config.node.clone(),
        client,
        reading,
        shared: shared.clone(),
    };
    let dead_after = config.ttl.max(Duration::from_secs(3));
    let link = LinkLoop {
        node: config.node.clone(),
        key: if config.encrypt {
            Key::encrypting(config.secret.as_bytes(), &config.node)
        } else {
            Key::new(config.secret.as_bytes())
        },
        socket,
        sfu,
        write: write_tx,
        peers: Vec::new(),
        slots: HashMap::new(),
        rooms: HashMap::new(),
        dead_after,
        shared: shared.clone(),
        refused_logged: HashSet::new(),
    };
    let tasks = vec![
        tokio::spawn(writer.run(write_rx)),
        tokio::spawn(reader.run(entries_tx)),
        tokio::spawn(link.run(from_sfu, entries_rx)),
    ];
    *shared.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
    tracing::info!(%relay, "cascade: relay link listening");
    Ok(Cascade { shared })
}

/// Rooms whose streams are read, with the last entry id read.
type Reading = Arc<Mutex<HashMap<String, String>>>;

/// What the link loop asks of Redis.
#[derive(Debug)]
enum Write {
    /// A new copy of `room` on worker `worker` says hello: announce it, count the copies
    /// that will answer, start reading the room's stream.
    Hello { room: Arc<RoomId>, worker: u8 },
    /// A fact (or the copy's end) from `worker`, to every copy or to one (`to`).
    Entry {
        room: String,
        worker: u8,
        to: Option<(String, u8)>,
        json: String,
    },
    /// The copy on `worker` closed; `last`: no copy of the room is left on this node.
    Closed {
        room: String,
        worker: u8,
        last: bool,
    },
}

/// Writes facts to Redis, in order, holding them while Redis is away.
struct Writer {
    node: String,
    relay: String,
    client: redis::Client,
    sfu: Sfu,
    reading: Reading,
    ttl: Duration,
    heartbeat: Duration,
    shared: Arc<Shared>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Write>) {
        let mut queue: VecDeque<Write> = VecDeque::new();
        let mut conn: Option<redis::aio::MultiplexedConnection> = None;
        let mut copies: BTreeSet<(String, u8)> = BTreeSet::new();
        let mut beat = tokio::time::interval(self.heartbeat);
        let mut down_since: Option<Instant> = None;
        loop {
            tokio::select! {
                w = rx.recv() => match w {
                    Some(w) => {
                        self.enqueue(&mut queue, w);
                        while let Ok(w) = rx.try_recv() {
                            self.enqueue(&mut queue, w);
                        }
                    }
                    None => return,
                },
                _ = beat.tick() => {}
            }
            if conn.is_none() {
                conn = self.connect().await;
            }
            let Some(c) = conn.as_mut() else {
                down_since.get_or_insert_with(|| {
                    tracing::warn!("cascade: Redis unreachable; room facts wait for it");
                    Instant::now()
                });
                self.hellos_without_redis(&mut queue);
                continue;
            };
            let mut failed = false;
            while let Some(w) = queue.front() {
                match self.write(c, w, &mut copies).await {
                    Ok(()) => {
                        queue.pop_front();
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cascade: Redis write failed");
                        failed = true;
                        break;
                    }
                }
            }
            if !failed && let Err(e) = self.refresh(c, &copies).await {
                tracing::debug!(error = %e, "cascade: Redis refresh failed");
                failed = true;
            }
            if failed {
                conn = None;
                down_since.get_or_insert_with(|| {
                    tracing::warn!("cascade: Redis unreachable; room facts wait for it");
                    Instant::now()
                });
                self.hellos_without_redis(&mut queue);
            } else if let Some(since) = down_since.take() {
                tracing::info!(
                    after_ms = since.elapsed().as_millis() as u64,
                    "cascade: Redis is back; queued room facts written"
                );
            }
        }
    }

    fn enqueue(&self, queue: &mut VecDeque<Write>, w: Write) {
        if queue.len() >= WRITE_QUEUE {
            queue.pop_front();
            self.shared
                .counters
                .facts_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        queue.push_back(w);
    }

    async fn connect(&self) -> Option<redis::aio::MultiplexedConnection> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)));
        self.client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .ok()
    }

    /// While Redis is away, a new copy waits for nobody: its hello is kept for later (the
    /// others answer then) and it reads its room from now on.
    fn hellos_without_redis(&self, queue: &mut VecDeque<Write>) {
        for w in queue.iter_mut() {
            if let Write::Hello { room, worker } = w {
                if self.start_reading(room.as_str(), &format!("{}-0", unix_ms())) {
                    tracing::debug!(room = %room, "cascade: reading a room from now on");
                }
                self.expect(room, *worker, 0);
                // Said once: the hello itself goes when Redis is back.
                *w = Write::Entry {
                    room: room.to_string(),
                    worker: *worker,
                    to: None,
                    json: serde_json::to_string(&Entry::Fact(Box::new(Fact::Hello)))
                        .unwrap_or_default(),
                };
            }
        }
    }

    fn start_reading(&self, room: &str, from: &str) -> bool {
        let mut r = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        if r.contains_key(room) {
            return false;
        }
        r.insert(room.to_string(), from.to_string());
        true
    }

    fn expect(&self, room: &Arc<RoomId>, worker: u8, n: usize) {
        self.sfu.deliver(Link {
            room: room.clone(),
            from: ALL_REMOTE,
            to: worker as usize,
            frame: Frame::Expect(n),
        });
    }

    async fn xadd(
        &self,
        c: &mut redis::aio::MultiplexedConnection,
        room: &str,
        worker: u8,
        to: &Option<(String, u8)>,
        json: &str,
    ) -> redis::RedisResult<String> {
        let to = to
            .as_ref()
            .map(|(n, w)| format!("{n}/{w}"))
            .unwrap_or_default();
        let id: String = redis::cmd("XADD")
            .arg(stream_key(room))
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_LEN)
            .arg("*")
            .arg("n")
            .arg(&self.node)
            .arg("a")
            .arg(&self.relay)
            .arg("w")
            .arg(worker)
            .arg("t")
            .arg(to)
            .arg("f")
            .arg(json)
            .query_async(c)
            .await?;
        self.shared
            .counters
            .facts_written
            .fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    async fn write(
        &self,
        c: &mut redis::aio::MultiplexedConnection,
        w: &Write,
        copies: &mut BTreeSet<(String, u8)>,
    ) -> redis::RedisResult<()> {
        match w {
            Write::Hello { room, worker } => {
                let json =
                    serde_json::to_string(&Entry::Fact(Box::new(Fact::Hello))).unwrap_or_default();
                let id = self.xadd(c, room.as_str(), *worker, &None, &json).await?;
                // Read from just before the hello: the answers come after it.
                self.start_reading(room.as_str(), &id);
                let now = unix_ms();
                let member = format!("{}/{}", self.node, worker);
                let key = copies_key(room.as_str());
                let (_, present): ((), Vec<String>) = redis::pipe()
                    .cmd("ZADD")
                    .arg(&key)
                    .arg(now + self.ttl.as_millis() as u64)
                    .arg(&member)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(self.ttl.as_millis() as u64 * 4)
                    .cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(now)
                    .arg("+inf")
                    .query_async(c)
                    .await?;
                let mine = format!("{}/", self.node);
                let others = present.iter().filter(|m| !m.starts_with(&mine)).count();
                copies.insert((room.to_string(), *worker));
                self.expect(room, *worker, others);
            }
            Write::Entry {
                room,
                worker,
                to,
                json,
            } => {
                self.xadd(c, room, *worker, to, json).await?;
            }
            Write::Closed { room, worker, last } => {
                let json = serde_json::to_string(&Entry::Gone).unwrap_or_default();
                self.xadd(c, room, *worker, &None, &json).await?;
                let member = format!("{}/{}", self.node, worker);
                let _: () = redis::cmd("ZREM")
                    .arg(copies_key(room))
                    .arg(member)
                    .query_async(c)
                    .await?;
                copies.remove(&(room.clone(), *worker));
                if *last {
                    self.reading
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(room);
                }
            }
        }
        Ok(())
    }

    /// Every heartbeat: this node's copies stay listed, the streams stay alive.
    async fn refresh(
        &self,
        c: &mut redis::aio::MultiplexedConnection,
        copies: &BTreeSet<(String, u8)>,
    ) -> redis::RedisResult<()> {
        if copies.is_empty() {
            return Ok(());
        }
        let until = unix_ms() + self.ttl.as_millis() as u64;
        let mut p = redis::pipe();
        for (room, worker) in copies {
            let key = copies_key(room);
            p.cmd("ZADD")
                .arg(&key)
                .arg(until)
                .arg(format!("{}/{}", self.node, worker))
                .ignore();
            p.cmd("PEXPIRE")
                .arg(&key)
                .arg(self.ttl.as_millis() as u64 * 4)
                .ignore();
            p.cmd("EXPIRE").arg(stream_key(room)).arg(3_600).ignore();
        }
        p.query_async::<()>(c).await
    }
}

/// One fact read from a room's stream.
#[derive(Debug)]
struct ReadEntry {
    room: String,
    node: String,
    relay: Option<SocketAddr>,
    worker: u8,
    to: Option<(String, u8)>,
    entry: Entry,
}

/// Reads the streams of the rooms with copies here (one connection of its own: `XREAD
/// BLOCK` holds it).
struct Reader {
    node: String,
    client: redis::Client,
    reading: Reading,
    shared: Arc<Shared>,
}

impl Reader {
    async fn run(self, tx: mpsc::Sender<ReadEntry>) {
        let mut conn: Option<redis::aio::MultiplexedConnection> = None;
        loop {
            let rooms: Vec<(String, String)> = self
                .reading
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(r, id)| (r.clone(), id.clone()))
                .collect();
            if rooms.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            if conn.is_none() {
                let cfg = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_millis(500)))
                    .set_response_timeout(Some(Duration::from_secs(2)));
                conn = self
                    .client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await
                    .ok();
            }
            let Some(c) = conn.as_mut() else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(512)
                .arg("BLOCK")
                .arg(100)
                .arg("STREAMS");
            for (room, _) in &rooms {
                cmd.arg(stream_key(room));
            }
            for (_, id) in &rooms {
                cmd.arg(id);
            }
            let reply: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
                cmd.query_async(c).await;
            let reply = match reply {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "cascade: XREAD failed");
                    conn = None;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            for key in reply.keys {
                let Some(room) = key
                    .key
                    .strip_prefix(PREFIX)
                    .and_then(|k| k.strip_suffix(":facts"))
                    .map(str::to_string)
                else {
                    continue;
                };
                let mut last = None;
                for e in key.ids {
                    last = Some(e.id.clone());
                    let Some(entry) = self.parse(&room, &e) else {
                        continue;
                    };
                    self.shared
                        .counters
                        .facts_read
                        .fetch_add(1, Ordering::Relaxed);
                    if tx.send(entry).await.is_err() {
                        return;
                    }
                }
                if let Some(id) = last {
                    let mut r = self.reading.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(at) = r.get_mut(&room) {
                        *at = id;
                    }
                }
            }
        }
    }

    fn parse(&self, room: &str, e: &redis::streams::StreamId) -> Option<ReadEntry> {
        let node: String = e.get("n")?;
        if node == self.node {
            return None;
        }
        let to: String = e.get("t").unwrap_or_default();
        let to = match to.split_once('/') {
            Some((n, w)) => {
                if n != self.node {
                    return None;
                }
                Some((n.to_string(), w.parse().ok()?))
            }
            None => None,
        };
        let json: String = e.get("f")?;
        let entry = match serde_json::from_str(&json) {
            Ok(x) => x,
            Err(err) => {
                tracing::warn!(room, %node, error = %err, "cascade: a fact from another node cannot be read (another version?)");
                return None;
            }
        };
        Some(ReadEntry {
            room: room.to_string(),
            relay: e.get::<String>("a").and_then(|a| a.parse().ok()),
            worker: e.get("w")?,
            node,
            to,
            entry,
        })
    }
}

/// The link to one other node.
struct Peer {
    id: String,
    addr: Option<SocketAddr>,
    last_heard: Instant,
    dead: bool,
    last_ping: Option<Instant>,
    tx_seq: u32,
    /// Media datagrams sent, for retransmission: (seq of the first, datagrams).
    history: VecDeque<Vec<u8>>,
    first_seq: u32,
    rx_high: u32,
    missing: VecDeque<(u32, Instant)>,
    stats: LinkStats,
}

impl Peer {
    fn new(id: String, now: Instant) -> Peer {
        Peer {
            stats: LinkStats {
                node: id.clone(),
                alive: true,
                ..Default::default()
            },
            id,
            addr: None,
            last_heard: now,
            dead: false,
            last_ping: None,
            tx_seq: 0,
            history: VecDeque::new(),
            first_seq: 1,
            rx_high: 0,
            missing: VecDeque::new(),
        }
    }

    /// A media datagram's `seq` arrived: whether it is new (not a duplicate), and the
    /// sequence numbers found missing.
    fn received(&mut self, seq: u32, now: Instant) -> (bool, Vec<u32>) {
        // A sender that restarted numbers from 1 again.
        if seq.saturating_add(8_192) < self.rx_high {
            self.rx_high = 0;
            self.missing.clear();
        }
        if seq > self.rx_high {
            let mut gaps = Vec::new();
            if self.rx_high > 0 {
                let from = (self.rx_high + 1).max(seq.saturating_sub(wire::MAX_NACKS as u32));
                for s in from..seq {
                    gaps.push(s);
                    self.missing.push_back((s, now));
                }
                self.stats.missing += (seq - self.rx_high - 1) as u64;
            }
            self.rx_high = seq;
            return (true, gaps);
        }
        if let Some(i) = self.missing.iter().position(|(s, _)| *s == seq) {
            self.missing.remove(i);
            self.stats.recovered += 1;
            return (true, Vec::new());
        }
        (false, Vec::new())
    }

    fn remember(&mut self, seq: u32, datagram: Vec<u8>) {
        if self.history.is_empty() {
            self.first_seq = seq;
        }
        self.history.push_back(datagram);
        if self.history.len() > HISTORY {
            self.history.pop_front();
            self.first_seq = self.first_seq.wrapping_add(1);
        }
    }

    fn sent(&self, seq: u32) -> Option<&Vec<u8>> {
        let i = seq.checked_sub(self.first_seq)? as usize;
        self.history.get(i)
    }
}

/// Copies of one room: on this node's workers, and on other nodes (slot, worker).
#[derive(Default)]
struct RoomCopies {
    room: Option<Arc<RoomId>>,
    local: BTreeSet<u8>,
    remote: HashSet<(u32, u8)>,
}

/// The relay link loop: media and upstream messages over UDP, facts to the writer and
/// from the reader, liveness.
struct LinkLoop {
    node: String,
    key: Key,
    socket: UdpSocket,
    sfu: Sfu,
    write: mpsc::Sender<Write>,
    /// By slot (index).
    peers: Vec<Peer>,
    slots: HashMap<String, u32>,
    rooms: HashMap<String, RoomCopies>,
    dead_after: Duration,
    shared: Arc<Shared>,
    refused_logged: HashSet<&'static str>,
}

impl LinkLoop {
    async fn run(
        mut self,
        mut from_sfu: mpsc::Receiver<Link>,
        mut entries: mpsc::Receiver<ReadEntry>,
    ) {
        let mut buf = vec![0u8; 2_048];
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                l = from_sfu.recv() => match l {
                    Some(l) => {
                        self.outbound(l).await;
                        while let Ok(l) = from_sfu.try_recv() {
                            self.outbound(l).await;
                        }
                    }
                    None => return,
                },
                e = entries.recv() => {
                    if let Some(e) = e {
                        self.inbound_fact(e);
                    }
                }
                r = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        let data = buf[..n].to_vec();
                        self.datagram(&data, from);
                        while let Ok((n, from)) = self.socket.try_recv_from(&mut buf) {
                            let data = buf[..n].to_vec();
                            self.datagram(&data, from);
                        }
                    }
                }
                _ = tick.tick() => self.tick(),
            }
        }
    }

    fn slot(&mut self, node: &str) -> u32 {
        if let Some(s) = self.slots.get(node) {
            return *s;
        }
        let s = self.peers.len() as u32;
        self.peers.push(Peer::new(node.to_string(), Instant::now()));
        self.shared
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(node.to_string());
        self.slots.insert(node.to_string(), s);
        s
    }

    fn room_arc(&mut self, room: &str) -> Option<Arc<RoomId>> {
        let copies = self.rooms.entry(room.to_string()).or_default();
        if copies.room.is_none() {
            copies.room = RoomId::parse(room).ok().map(Arc::new);
        }
        copies.room.clone()
    }

    async fn write(&self, w: Write) {
        // Awaited: facts are few, and their order matters.
        let _ = self.write.send(w).await;
    }

    /// What a copy here sends to other nodes.
    async fn outbound(&mut self, l: Link) {
        let worker = l.from as u8;
        let room = l.room.to_string();
        if l.to == ALL_REMOTE {
            match l.frame {
                Frame::Fact(Fact::Hello) => {
                    let copies = self.rooms.entry(room).or_default();
                    copies.room = Some(l.room.clone());
                    copies.local.insert(worker);
                    self.write(Write::Hello {
                        room: l.room,
                        worker,
                    })
                    .await;
                }
                Frame::Fact(f) => {
                    let json = serde_json::to_string(&Entry::Fact(Box::new(f))).unwrap_or_default();
                    self.write(Write::Entry {
                        room,
                        worker,
                        to: None,
                        json,
                    })
                    .await;
                }
                Frame::Gone => {
                    let last = match self.rooms.get_mut(&room) {
                        Some(c) => {
                            c.local.remove(&worker);
                            c.local.is_empty()
                        }
                        None => true,
                    };
                    if last {
                        self.rooms.remove(&room);
                    }
                    self.write(Write::Closed { room, worker, last }).await;
                }
                _ => {}
            }
            return;
        }
        let (slot, to) = split_key(l.to);
        let Some(peer) = self.peers.get(slot as usize) else {
            return;
        };
        let node = peer.id.clone();
        match l.frame {
            Frame::Fact(f) => {
                let json = serde_json::to_string(&Entry::Fact(Box::new(f))).unwrap_or_default();
                self.write(Write::Entry {
                    room,
                    worker,
                    to: Some((node, to)),
                    json,
                })
                .await;
            }
            Frame::Media { track, packet, .. } => {
                let Some(rtp) = encode_rtp(&packet) else {
                    return;
                };
                self.send_media(
                    slot,
                    Kind::Media {
                        room,
                        from: worker,
                        to,
                        track: track.as_str().to_string(),
                        sent_us: unix_us(),
                        rtp,
                    },
                );
            }
            Frame::Upstream(u) => {
                let Ok(json) = serde_json::to_vec(&u) else {
                    return;
                };
                self.send(
                    slot,
                    0,
                    Kind::Upstream {
                        room,
                        from: worker,
                        to,
                        json,
                    },
                );
            }
            _ => {}
        }
    }

    fn send_media(&mut self, slot: u32, kind: Kind) {
        let Some(peer) = self.peers.get_mut(slot as usize) else {
            return;
        };
        if peer.dead {
            return;
        }
        peer.tx_seq = peer.tx_seq.wrapping_add(1).max(1);
        let seq = peer.tx_seq;
        let Some(addr) = peer.addr else {
            return;
        };
        let d = Datagram {
            node: self.node.clone(),
            seq,
            kind,
        };
        let bytes = wire::encode(&mut self.key, &d);
        self.transmit(&bytes, addr);
        let peer = &mut self.peers[slot as usize];
        peer.stats.packets_sent += 1;
        peer.remember(seq, bytes);
    }

    fn send(&mut self, slot: u32, seq: u32, kind: Kind) {
        let Some(addr) = self.peers.get(slot as usize).and_then(|p| p.addr) else {
            return;
        };
        let d = Datagram {
            node: self.node.clone(),
            seq,
            kind,
        };
        let bytes = wire::encode(&mut self.key, &d);
        self.transmit(&bytes, addr);
    }

    /// One datagram out; one the socket cannot take is dropped and counted.
    fn transmit(&self, bytes: &[u8], addr: SocketAddr) -> bool {
        if self.shared.partitioned.load(Ordering::Relaxed) {
            return false;
        }
        if self.socket.try_send_to(bytes, addr).is_err() {
            self.shared
                .counters
                .send_dropped
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// A fact from another node's copy, read from the room's stream.
    fn inbound_fact(&mut self, e: ReadEntry) {
        let slot = self.slot(&e.node);
        if let Some(addr) = e.relay {
            self.peers[slot as usize].addr = Some(addr);
        }
        // A node lost on the link stays lost until the link hears it again (then both
        // sides resynchronise): its facts through Redis must not bring its participants
        // back without their media.
        if self.peers[slot as usize].dead {
            return;
        }
        let Some(room) = self.room_arc(&e.room) else {
            return;
        };
        let from = remote_key(slot, e.worker);
        let to = e.to.map_or(ALL_REMOTE, |(_, w)| w as usize);
        let copies = self.rooms.entry(e.room.clone()).or_default();
        let frame = match e.entry {
            Entry::Fact(f) => {
                copies.remote.insert((slot, e.worker));
                Frame::Fact(*f)
            }
            Entry::Gone => {
                copies.remote.remove(&(slot, e.worker));
                Frame::Gone
            }
        };
        if copies.local.is_empty() {
            return;
        }
        self.sfu.deliver(Link {
            room,
            from,
            to,
            frame,
        });
    }

    fn refused(&mut self, why: &'static str, from: SocketAddr) {
        self.shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        if self.refused_logged.insert(why) {
            tracing::warn!(%from, why, "cascade: relay datagram refused (logged once per kind)");
        }
    }

    fn datagram(&mut self, data: &[u8], from: SocketAddr) {
        if self.shared.partitioned.load(Ordering::Relaxed) {
            return;
        }
        let d = match wire::decode(&mut self.key, data) {
            Ok(d) => d,
            Err(wire::WireError::Foreign) => return self.refused("not a relay datagram", from),
            Err(wire::WireError::Unauthentic) => return self.refused("not authentic", from),
            Err(wire::WireError::Malformed) => return self.refused("malformed", from),
        };
        if d.node == self.node {
            return;
        }
        let now = Instant::now();
        let slot = self.slot(&d.node);
        let back_from_dead = {
            let p = &mut self.peers[slot as usize];
            p.last_heard = now;
            p.stats.packets_received += 1;
            std::mem::replace(&mut p.dead, false)
        };
        if back_from_dead {
            self.resync(slot);
        }
        match d.kind {
            Kind::Ping(t) => self.send(slot, 0, Kind::Pong(t)),
            Kind::Pong(t) => {
                let sent = Duration::from_micros(t);
                let rtt = self
                    .started()
                    .elapsed()
                    .checked_sub(sent)
                    .map(|d| d.as_micros() as u64);
                self.peers[slot as usize].stats.rtt_us = rtt;
            }
            Kind::Nack(seqs) => {
                for s in seqs {
                    let Some(bytes) = self.peers[slot as usize].sent(s).cloned() else {
                        continue;
                    };
                    let Some(addr) = self.peers[slot as usize].addr else {
                        return;
                    };
                    if self.transmit(&bytes, addr) {
                        self.peers[slot as usize].stats.retransmitted += 1;
                    }
                }
            }
            Kind::Media {
                room,
                from,
                to,
                track,
                sent_us,
                rtp,
            } => {
                let (new, gaps) = self.peers[slot as usize].received(d.seq, now);
                if !gaps.is_empty() {
                    self.send(slot, 0, Kind::Nack(gaps));
                }
                if !new {
                    return;
                }
                let Some(packet) = decode_rtp(&rtp) else {
                    let addr = from_addr(&self.peers[slot as usize]);
                    return self.refused("not RTP", addr);
                };
                let Some(room) = self.rooms.get(&room).and_then(|c| c.room.clone()) else {
                    return;
                };
                self.sfu.deliver(Link {
                    room,
                    from: remote_key(slot, from),
                    to: to as usize,
                    frame: Frame::Media {
                        track: TrackId::from_wire(track),
                        packet,
                        // The hop's latency counts from the send on the other node (clocks
                        // that disagree by more than a second count nothing).
                        at: now
                            .checked_sub(Duration::from_micros(hop_us(sent_us)))
                            .unwrap_or(now),
                    },
                });
            }
            Kind::Upstream {
                room,
                from,
                to,
                json,
            } => {
                let Ok(u) = serde_json::from_slice::<Upstream>(&json) else {
                    return;
                };
                let Some(room) = self.rooms.get(&room).and_then(|c| c.room.clone()) else {
                    return;
                };
                self.sfu.deliver(Link {
                    room,
                    from: remote_key(slot, from),
                    to: to as usize,
                    frame: Frame::Upstream(u),
                });
            }
        }
    }

    /// A fixed origin for ping stamps (microseconds since the loop's first ping).
    fn started(&self) -> Instant {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *START.get_or_init(Instant::now)
    }

    /// A node was gone and is heard again: this node's copies of every room say hello
    /// again, and the snapshots exchanged put both sides back in step.
    fn resync(&mut self, slot: u32) {
        tracing::info!(node = %self.peers[slot as usize].id, "cascade: a lost node is back; rooms resynchronised");
        for copies in self.rooms.values() {
            let Some(room) = copies.room.clone() else {
                continue;
            };
            for w in &copies.local {
                self.sfu.deliver(Link {
                    room: room.clone(),
                    from: ALL_REMOTE,
                    to: *w as usize,
                    frame: Frame::Resync,
                });
            }
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        // The nodes sharing a room with this one.
        let mut sharing: HashMap<u32, usize> = HashMap::new();
        for c in self.rooms.values() {
            let slots: HashSet<u32> = c.remote.iter().map(|(s, _)| *s).collect();
            for s in slots {
                *sharing.entry(s).or_default() += 1;
            }
        }
        let stamp = self.started().elapsed().as_micros() as u64;
        for slot in 0..self.peers.len() as u32 {
            let rooms = sharing.get(&slot).copied().unwrap_or(0);
            let p = &mut self.peers[slot as usize];
            p.stats.rooms = rooms;
            p.stats.alive = !p.dead;
            p.stats.addr = p.addr.map(|a| a.to_string());
            p.missing
                .retain(|(_, at)| now.saturating_duration_since(*at) < MISSING_FOR);
            // A lost node is still pinged for a while: a partition that heals is noticed
            // (by the first answer), a crashed node is given up on.
            let lost_recently = p.dead && now.saturating_duration_since(p.last_heard) < KEEP_TRYING;
            if rooms == 0 && !lost_recently {
                continue;
            }
            if p.last_ping
                .is_none_or(|t| now.saturating_duration_since(t) >= PING_EVERY)
            {
                p.last_ping = Some(now);
                self.send(slot, 0, Kind::Ping(stamp));
            }
            let p = &mut self.peers[slot as usize];
            if !p.dead && now.saturating_duration_since(p.last_heard) >= self.dead_after {
                p.dead = true;
                p.stats.alive = false;
                self.shared
                    .counters
                    .nodes_lost
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %p.id, silent_ms = now.saturating_duration_since(p.last_heard).as_millis() as u64, "cascade: node lost; its participants leave the rooms here");
                self.node_lost(slot);
            }
        }
        let links: Vec<LinkStats> = self.peers.iter().map(|p| p.stats.clone()).collect();
        *self.shared.links.lock().unwrap_or_else(|e| e.into_inner()) = links;
    }

    /// Every copy on the node at `slot` leaves every room here.
    fn node_lost(&mut self, slot: u32) {
        for c in self.rooms.values_mut() {
            let gone: Vec<(u32, u8)> = c
                .remote
                .iter()
                .filter(|(s, _)| *s == slot)
                .copied()
                .collect();
            let Some(room) = c.room.clone() else {
                continue;
            };
            for (s, w) in gone {
                c.remote.remove(&(s, w));
                self.sfu.deliver(Link {
                    room: room.clone(),
                    from: remote_key(s, w),
                    to: ALL_REMOTE,
                    frame: Frame::Gone,
                });
            }
        }
    }
}

fn from_addr(p: &Peer) -> SocketAddr {
    p.addr
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
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

    #[test]
    fn gaps_are_asked_once_and_recoveries_counted() {
        let t0 = Instant::now();
        let mut p = Peer::new("n".into(), t0);
        assert_eq!(p.received(1, t0), (true, vec![]));
        assert_eq!(p.received(2, t0), (true, vec![]));
        assert_eq!(p.received(5, t0), (true, vec![3, 4]), "3 and 4 missing");
        assert_eq!(p.received(4, t0), (true, vec![]), "4 retransmitted");
        assert_eq!(p.received(4, t0), (false, vec![]), "a duplicate");
        assert_eq!(p.received(2, t0), (false, vec![]), "old");
        assert_eq!((p.stats.missing, p.stats.recovered), (2, 1));
        assert_eq!(p.received(1, t0), (false, vec![]), "old, not a restart");
        p.rx_high = 100_000;
        assert_eq!(
            p.received(1, t0),
            (true, vec![]),
            "a sender numbering afresh"
        );
        assert_eq!(p.rx_high, 1);
    }

    #[test]
    fn the_history_finds_what_was_sent() {
        let mut p = Peer::new("n".into(), Instant::now());
        for s in 1..=(HISTORY as u32 + 10) {
            p.remember(s, s.to_be_bytes().to_vec());
        }
        assert_eq!(p.sent(10), None, "fell out of the history");
        let s = HISTORY as u32 + 5;
        assert_eq!(p.sent(s), Some(&s.to_be_bytes().to_vec()));
        assert_eq!(p.sent(HISTORY as u32 + 11), None);
    }
}
