//! The Redis side: this node's record and heartbeat, room claims, the cluster view.
//!
//! Every write that must be atomic is a Lua script (Redis runs each one alone), so two
//! nodes placing the same new room at the same moment both read the claim the first one
//! wrote: a room has one owner.
//!
//! Redis down: every call fails fast (`op_timeout`), the node logs the outage once and
//! keeps serving the rooms it has; [`Cluster::place`] answers
//! [`ClusterError::Unavailable`]. The connection manager reconnects by itself, and the
//! next heartbeat that gets through registers the node again and re-claims its rooms (a
//! restarted Redis without persistence has forgotten everything).

use crate::choose::{self, Candidate, Load, NodeInfo};
use crate::load::{Cpu, Rate};
use crate::{ClusterConfig, ClusterError, PlacementStrategy};
use confab_proto::RoomId;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;

const PREFIX: &str = "confab:";
const NODES: &str = "confab:nodes";

fn node_key(id: &str) -> String {
    format!("{PREFIX}node:{id}")
}

fn node_rooms_key(id: &str) -> String {
    format!("{PREFIX}node:{id}:rooms")
}

fn room_key(room: &str) -> String {
    format!("{PREFIX}room:{room}")
}

/// Claims a room for a node unless another live claim exists; returns the owner.
/// KEYS: room key, the node's room set. ARGV: node id, ttl ms, room, stale owner ('' if
/// none: a claim by that node, whose record is gone, is taken over).
const CLAIM: &str = r"
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[4] then return owner end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return ARGV[1]
";

/// The heartbeat: the node's record, its rooms' claims refreshed (or taken again after
/// Redis forgot them), emptied rooms released, expired claims forgotten.
/// KEYS: nodes set, node key, node's room set. ARGV: id, ttl ms, record, room key prefix,
/// n, then n rooms open here, then the rooms to release. Returns [room, owner, ...] for
/// rooms open here that another node owns.
const HEARTBEAT: &str = r"
local id, ttl, prefix = ARGV[1], ARGV[2], ARGV[4]
redis.call('SADD', KEYS[1], id)
redis.call('SET', KEYS[2], ARGV[3], 'PX', ttl)
local n = tonumber(ARGV[5])
local lost = {}
for i = 6, 5 + n do
  local room = ARGV[i]
  local owner = redis.call('GET', prefix .. room)
  if not owner or owner == id then
    redis.call('SET', prefix .. room, id, 'PX', ttl)
    redis.call('SADD', KEYS[3], room)
  else
    table.insert(lost, room)
    table.insert(lost, owner)
  end
end
for i = 6 + n, #ARGV do
  local room = ARGV[i]
  if redis.call('GET', prefix .. room) == id then redis.call('DEL', prefix .. room) end
  redis.call('SREM', KEYS[3], room)
end
for _, room in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if redis.call('GET', prefix .. room) ~= id then redis.call('SREM', KEYS[3], room) end
end
redis.call('PEXPIRE', KEYS[3], ttl)
return lost
";

/// The live nodes: for each, its record and its claims' count, then (ARGV[2] = '1') the
/// rooms it owns. Ids whose record expired are pruned.
/// KEYS: nodes set. ARGV: key prefix, '1' to list rooms.
const LIST: &str = r"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local rec = redis.call('GET', ARGV[1] .. 'node:' .. id)
  if rec then
    local set = ARGV[1] .. 'node:' .. id .. ':rooms'
    table.insert(out, rec)
    if ARGV[2] == '1' then
      local rooms = {}
      for _, room in ipairs(redis.call('SMEMBERS', set)) do
        if redis.call('GET', ARGV[1] .. 'room:' .. room) == id then table.insert(rooms, room) end
      end
      table.insert(out, tostring(#rooms))
      for _, room in ipairs(rooms) do table.insert(out, room) end
    else
      table.insert(out, tostring(redis.call('SCARD', set)))
    end
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return out
";

/// Who this node is, as other nodes and clients see it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: String,
    /// The signaling WebSocket clients are redirected to.
    pub url: String,
    /// Announced media addresses.
    pub media: Vec<String>,
}

/// This node's rooms and load, read at each heartbeat.
#[derive(Debug, Clone, Default)]
pub struct LocalState {
    pub rooms: Vec<RoomId>,
    pub participants: usize,
    /// Media datagrams sent since start (a counter).
    pub datagrams_out: u64,
}

/// Reads [`LocalState`] (the server passes a closure over its media plane).
pub type LocalView = Arc<dyn Fn() -> LocalState + Send + Sync>;

/// Where a room's participants go.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// This node hosts it: join here.
    Here,
    /// Another node does: send the client there.
    There(NodeInfo),
}

/// A node in the admin API's view.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub info: NodeInfo,
    /// Rooms whose claim this node holds (including new ones its clients are on their way to).
    pub rooms_owned: Vec<String>,
}

/// `GET /api/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    /// The node that answered.
    pub node: String,
    pub placement: PlacementStrategy,
    pub nodes: Vec<NodeView>,
}

/// A handle on the cluster: cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.inner.me.id)
            .finish()
    }
}

struct Inner {
    me: Identity,
    mode: crate::ClusterMode,
    /// The cascade transport (cascade mode), set once started.
    cascade: std::sync::OnceLock<crate::cascade::Cascade>,
    started_at: u64,
    ttl_ms: u64,
    heartbeat: Duration,
    op_timeout: Duration,
    strategy: PlacementStrategy,
    conn: ConnectionManager,
    local: LocalView,
    /// Rooms this node claimed or served, with when it last saw them: a room gone from
    /// the media plane for a whole heartbeat period is released.
    owned: Mutex<HashMap<RoomId, Instant>>,
    /// Rooms open here that another node owns (logged once each).
    conflicts: Mutex<HashSet<RoomId>>,
    up: AtomicBool,
    draining: AtomicBool,
    stopped: AtomicBool,
    nodes_seen: AtomicUsize,
    redirects: AtomicU64,
    refusals: AtomicU64,
    wake: Notify,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The heartbeat's meters, kept between beats.
#[derive(Default)]
struct Meters {
    egress: Rate,
    cpu: Cpu,
}

/// Milliseconds since the Unix epoch (the registry's records and the cascade's ids).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> Self {
        ClusterError::Unavailable(e.to_string())
    }
}

impl Cluster {
    /// Connects (lazily: an unreachable Redis is an outage, not a start-up error),
    /// registers this node with a first heartbeat and starts heartbeating.
    pub async fn start(
        config: &ClusterConfig,
        me: Identity,
        local: LocalView,
    ) -> Result<Cluster, ClusterError> {
        config.validate()?;
        let url = config
            .redis_url
            .as_deref()
            .ok_or_else(|| ClusterError::Config("cluster.redis_url is not set".into()))?;
        let client = redis::Client::open(url)
            .map_err(|e| ClusterError::Config(format!("cluster.redis_url: {e}")))?;
        // Fail fast: a join waits on placement, and a dead Redis must not hold it long.
        let op_timeout = Duration::from_millis((config.ttl_ms / 2).clamp(50, 1_000));
        let cm = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout))
            .set_number_of_retries(1)
            .set_max_delay(op_timeout);
        let conn = ConnectionManager::new_lazy_with_config(client, cm)
            .map_err(|e| ClusterError::Config(format!("cluster.redis_url: {e}")))?;
        let cluster = Cluster {
            inner: Arc::new(Inner {
                me,
                mode: config.mode,
                cascade: std::sync::OnceLock::new(),
                started_at: unix_ms(),
                ttl_ms: config.ttl_ms,
                heartbeat: Duration::from_millis(config.heartbeat_ms),
                op_timeout,
                strategy: config.placement,
                conn,
                local,
                owned: Mutex::new(HashMap::new()),
                conflicts: Mutex::new(HashSet::new()),
                up: AtomicBool::new(true),
                draining: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                nodes_seen: AtomicUsize::new(0),
                redirects: AtomicU64::new(0),
                refusals: AtomicU64::new(0),
                wake: Notify::new(),
                task: Mutex::new(None),
            }),
        };
        let mut meters = Meters::default();
        cluster.beat(&mut meters).await;
        if cluster.is_up() {
            tracing::info!(
                node = %cluster.inner.me.id,
                url = %cluster.inner.me.url,
                "cluster: node registered"
            );
        } else {
            tracing::info!(
                node = %cluster.inner.me.id,
                url = %cluster.inner.me.url,
                "cluster: node started; it registers once Redis answers"
            );
        }
        let c = cluster.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(c.inner.heartbeat) => {}
                    _ = c.inner.wake.notified() => {}
                }
                if c.inner.stopped.load(Ordering::Relaxed) {
                    break;
                }
                c.beat(&mut meters).await;
            }
        });
        *cluster.inner.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(cluster)
    }

    pub fn mode(&self) -> crate::ClusterMode {
        self.inner.mode
    }

    /// Attaches the cascade transport (for its stats, and to stop it with the node).
    pub fn set_cascade(&self, c: crate::cascade::Cascade) {
        let _ = self.inner.cascade.set(c);
    }

    pub fn cascade(&self) -> Option<&crate::cascade::Cascade> {
        self.inner.cascade.get()
    }

    pub fn node_id(&self) -> &str {
        &self.inner.me.id
    }

    /// Whether the last call to Redis succeeded.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Live nodes at the last heartbeat (this one included).
    pub fn nodes_seen(&self) -> usize {
        self.inner.nodes_seen.load(Ordering::Relaxed)
    }

    /// Joins sent to another node.
    pub fn redirects(&self) -> u64 {
        self.inner.redirects.load(Ordering::Relaxed)
    }

    /// Joins refused because no placement could be made.
    pub fn refusals(&self) -> u64 {
        self.inner.refusals.load(Ordering::Relaxed)
    }

    /// Marks this node draining: from the next heartbeat (now) on, it gets no new rooms.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
        self.inner.wake.notify_one();
    }

    /// Stops heartbeating. The record and the claims stay until they expire (`ttl_ms`),
    /// as after a crash: clients of this node reconnect through another and are placed
    /// again once they have.
    pub async fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
        self.inner.wake.notify_one();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// Where `room` lives, placing it if it is new (for a room not open on this node: the
    /// caller serves rooms it has without asking).
    pub async fn place(&self, room: &RoomId) -> Result<Placement, ClusterError> {
        let r = match tokio::time::timeout(self.inner.op_timeout, self.try_place(room)).await {
            Ok(r) => r,
            Err(_) => Err(ClusterError::Unavailable(
                "Redis did not answer in time".into(),
            )),
        };
        match &r {
            Ok(Placement::There(_)) => {
                self.mark_up();
                self.inner.redirects.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Placement::Here) => self.mark_up(),
            Err(ClusterError::Unavailable(e)) => {
                self.mark_down(e);
                self.inner.refusals.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.inner.refusals.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    async fn try_place(&self, room: &RoomId) -> Result<Placement, ClusterError> {
        let me = &self.inner.me.id;
        let mut conn = self.inner.conn.clone();
        let key = room_key(room.as_str());
        // A lost race sends us back to read the winner's claim; three rounds settle it
        // unless claims expire as fast as they are made.
        for _ in 0..3 {
            let owner: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
            let mut stale = String::new();
            if let Some(owner) = owner {
                if &owner == me {
                    self.note_owned(room);
                    return Ok(Placement::Here);
                }
                match self.node(&mut conn, &owner).await? {
                    Some(info) => return Ok(Placement::There(info)),
                    // Its node's record expired: the claim outlived it, take it over.
                    None => stale = owner,
                }
            }
            let nodes = list(&mut conn, false).await?;
            let candidates: Vec<Candidate> = nodes
                .into_iter()
                .map(|(info, claims, _)| Candidate { info, claims })
                .collect();
            let chosen = choose::choose(&candidates, self.inner.strategy, rand::random())
                .ok_or(ClusterError::NoNode)?;
            let winner: String = redis::Script::new(CLAIM)
                .key(&key)
                .key(node_rooms_key(&chosen.info.id))
                .arg(&chosen.info.id)
                .arg(self.inner.ttl_ms)
                .arg(room.as_str())
                .arg(&stale)
                .invoke_async(&mut conn)
                .await?;
            if winner == chosen.info.id {
                if &winner == me {
                    self.note_owned(room);
                    return Ok(Placement::Here);
                }
                return Ok(Placement::There(chosen.info.clone()));
            }
        }
        Err(ClusterError::Unavailable(
            "the room's placement did not settle".into(),
        ))
    }

    async fn node(
        &self,
        conn: &mut ConnectionManager,
        id: &str,
    ) -> Result<Option<NodeInfo>, ClusterError> {
        let rec: Option<String> = redis::cmd("GET")
            .arg(node_key(id))
            .query_async(conn)
            .await?;
        Ok(rec.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Every live node, its load and the rooms it owns.
    pub async fn view(&self) -> Result<ClusterView, ClusterError> {
        let mut conn = self.inner.conn.clone();
        let listed = tokio::time::timeout(self.inner.op_timeout, list(&mut conn, true)).await;
        let nodes = match listed {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                self.mark_down(&e.to_string());
                return Err(e);
            }
            Err(_) => {
                let e = "Redis did not answer in time";
                self.mark_down(e);
                return Err(ClusterError::Unavailable(e.into()));
            }
        };
        self.mark_up();
        let mut nodes: Vec<NodeView> = nodes
            .into_iter()
            .map(|(info, _, mut rooms)| {
                rooms.sort();
                NodeView {
                    info,
                    rooms_owned: rooms,
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        Ok(ClusterView {
            node: self.inner.me.id.clone(),
            placement: self.inner.strategy,
            nodes,
        })
    }

    fn note_owned(&self, room: &RoomId) {
        self.inner
            .owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(room.clone(), Instant::now());
    }

    fn mark_up(&self) {
        if !self.inner.up.swap(true, Ordering::Relaxed) {
            tracing::info!(node = %self.inner.me.id, "cluster: Redis is back, placing rooms again");
        }
    }

    /// Logs the outage once, not at every refused join.
    fn mark_down(&self, error: &str) {
        if self.inner.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                node = %self.inner.me.id,
                error,
                "cluster: Redis unavailable: serving the rooms open here, refusing rooms that need a placement"
            );
        }
    }

    async fn beat(&self, meters: &mut Meters) {
        let inner = &self.inner;
        let now = Instant::now();
        let local = (inner.local)();
        let here: HashSet<&RoomId> = local.rooms.iter().collect();
        let release: Vec<RoomId> = {
            let mut owned = inner.owned.lock().unwrap_or_else(|e| e.into_inner());
            for r in &local.rooms {
                owned.insert(r.clone(), now);
            }
            let gone: Vec<RoomId> = owned
                .iter()
                .filter(|(r, seen)| {
                    !here.contains(r) && now.saturating_duration_since(**seen) >= inner.heartbeat
                })
                .map(|(r, _)| r.clone())
                .collect();
            for r in &gone {
                owned.remove(r);
            }
            gone
        };
        let info = NodeInfo {
            id: inner.me.id.clone(),
            url: inner.me.url.clone(),
            media: inner.me.media.clone(),
            draining: inner.draining.load(Ordering::Relaxed),
            load: Load {
                rooms: local.rooms.len(),
                participants: local.participants,
                egress_pps: meters.egress.update(now, local.datagrams_out),
                cpu_pct: meters.cpu.update(now),
            },
            started_at: inner.started_at,
            updated_at: unix_ms(),
        };
        let Ok(record) = serde_json::to_string(&info) else {
            return;
        };
        let script = redis::Script::new(HEARTBEAT);
        let mut call = script.prepare_invoke();
        call.key(NODES)
            .key(node_key(&inner.me.id))
            .key(node_rooms_key(&inner.me.id))
            .arg(&inner.me.id)
            .arg(inner.ttl_ms)
            .arg(record)
            .arg(format!("{PREFIX}room:"))
            .arg(local.rooms.len());
        for r in &local.rooms {
            call.arg(r.as_str());
        }
        for r in &release {
            call.arg(r.as_str());
        }
        let mut conn = inner.conn.clone();
        let sent = tokio::time::timeout(
            inner.op_timeout,
            call.invoke_async::<Vec<String>>(&mut conn),
        )
        .await;
        let lost = match sent {
            Ok(Ok(lost)) => lost,
            Ok(Err(e)) => return self.mark_down(&e.to_string()),
            Err(_) => return self.mark_down("Redis did not answer in time"),
        };
        self.mark_up();
        if !release.is_empty() {
            tracing::debug!(rooms = release.len(), "cluster: released emptied rooms");
        }
        self.note_conflicts(&lost);
        if let Ok(Ok(nodes)) = tokio::time::timeout(inner.op_timeout, list(&mut conn, false)).await
        {
            inner.nodes_seen.store(nodes.len(), Ordering::Relaxed);
        }
    }

    /// Rooms open here whose claim another node holds: after an outage two nodes may have
    /// opened the same room. Both go on (their participants stay where they are); new
    /// joins go to the claim's owner. Logged once per room.
    fn note_conflicts(&self, lost: &[String]) {
        let mut conflicts = self
            .inner
            .conflicts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut now_lost = HashSet::new();
        for pair in lost.chunks(2) {
            let (Some(room), Some(owner)) = (pair.first(), pair.get(1)) else {
                continue;
            };
            let Ok(room) = RoomId::parse(room) else {
                continue;
            };
            if conflicts.insert(room.clone()) {
                tracing::warn!(
                    room = %room,
                    owner = %owner,
                    "cluster: this room is open here but owned by another node (after a Redis outage); new joins go there"
                );
            }
            now_lost.insert(room);
        }
        conflicts.retain(|r| now_lost.contains(r));
    }
}

/// Live nodes: (record, claims held, rooms owned when `rooms`).
async fn list(
    conn: &mut ConnectionManager,
    rooms: bool,
) -> Result<Vec<(NodeInfo, usize, Vec<String>)>, ClusterError> {
    let flat: Vec<String> = redis::Script::new(LIST)
        .key(NODES)
        .arg(PREFIX)
        .arg(if rooms { "1" } else { "0" })
        .invoke_async(conn)
        .await?;
    Ok(parse_list(&flat, rooms))
}

fn parse_list(flat: &[String], rooms: bool) -> Vec<(NodeInfo, usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut it = flat.iter();
    while let (Some(rec), Some(n)) = (it.next(), it.next()) {
        let n: usize = n.parse().unwrap_or(0);
        let names: Vec<String> = if rooms {
            it.by_ref().take(n).cloned().collect()
        } else {
            Vec::new()
        };
        if let Ok(info) = serde_json::from_str::<NodeInfo>(rec) {
            out.push((info, n, names));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_replies_are_parsed() {
        let rec = |id: &str| {
            serde_json::to_string(&NodeInfo {
                id: id.into(),
                url: format!("ws://{id}/ws"),
                media: vec!["127.0.0.1:50000".into()],
                draining: false,
                load: Load::default(),
                started_at: 1,
                updated_at: 2,
            })
            .unwrap()
        };
        let flat: Vec<String> = vec![
            rec("a"),
            "2".into(),
            "r1".into(),
            "r2".into(),
            "not json".into(),
            "0".into(),
            rec("b"),
            "0".into(),
        ];
        let got = parse_list(&flat, true);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.id, "a");
        assert_eq!(got[0].1, 2);
        assert_eq!(got[0].2, vec!["r1".to_string(), "r2".into()]);
        assert_eq!(got[1].0.id, "b");
        let counts = parse_list(&[rec("a"), "7".into()], false);
        assert_eq!(counts[0].1, 7);
        assert!(counts[0].2.is_empty());
    }
}
