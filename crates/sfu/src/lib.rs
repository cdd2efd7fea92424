//! Confab's media plane.
//!
//! Pure decision logic, no IO (takes `now`, returns values):
//! - [`rtp`]: sequence widening and duplicate detection, codec payload inspection, the
//!   sequence/timestamp [`rtp::Munger`].
//! - [`forwarder`]: per down-track forward-or-drop decision.
//! - [`keyframe`]: keyframe-request throttling.
//! - [`chat`]: chat validation and history.
//! - [`room`]: a room as a sans-IO state machine (participants, tracks, down-tracks,
//!   negotiation, allocation, chat, speakers, recording taps): inputs in, outputs out.
//! - [`allocator`]: which layer of each track a subscriber gets, within its bandwidth.
//! - [`bwe`]: downlink estimate from receiver-report loss; bitrate meters.
//! - [`speaker`]: active speakers from RFC 6464 audio levels.
//! - [`names`]: distinct names in a room ("Ada (2)").
//! - [`budget`]: how much media-thread time one participant's signaling may take.
//! - [`sdp`]: what a publisher's offer negotiates (simulcast rids per mid, stream ids).
//! - [`sink`]: the recording hook (`TrackSink`), fed through bounded taps; built-in sinks
//!   in [`record`] (files + manifest, plain-RTP forwarder, command hook).
//! - [`control`]: recordings and administration (kicks and the bans they leave,
//!   [`expiring`]); [`events`]: room events for webhooks.
//!
//! - [`keys`]: worker-local newtype keys (participants, peers, tracks, rooms).
//!
//! IO at the edges:
//! - [`peer`]: the only module that drives the webrtc-rs `rtc` peer connection.
//! - [`udp`]: batched socket IO (recvmmsg/sendmmsg).
//! - [`worker`]: one thread per core, one UDP socket each: peers, timers and sessions,
//!   translating between `rtc` and the rooms.
//! - [`Sfu`] (this file): starts and supervises the workers, places rooms on them and
//!   hands signaling a [`Participant`] handle per join.

pub mod allocator;
pub mod budget;
pub mod bwe;
pub mod chat;
pub mod config;
pub mod control;
pub mod egress;
pub mod error;
pub mod events;
pub mod expiring;
pub mod forwarder;
pub mod keyframe;
pub mod keys;
pub mod names;
pub mod pacer;
pub mod peer;
pub mod probe;
pub mod record;
pub mod room;
pub mod rtp;
pub mod sdp;
pub mod sink;
pub mod speaker;
pub mod stats;
mod supervisor;
pub mod twcc;
pub mod udp;
pub mod worker;

pub use config::{RecordingConfig, SfuConfig};
pub use control::ControlError;
pub use error::{JoinError, PeerError, StartError};
pub use events::RoomEvent;
pub use stats::{LatencySnapshot, LoopSnapshot, SfuStats, StatsSnapshot};
pub use worker::{Elsewhere, RoomSummary};

use confab_proto::{
    ClientMessage, DisplayName, ErrorCode, ParticipantId, RequestId, RoomId, ServerMessage,
};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use supervisor::Supervisor;
use tokio::sync::{mpsc, oneshot};
use worker::Command;

struct WorkerHandle {
    commands: mpsc::Sender<Command>,
    addr: SocketAddr,
    /// The announced ICE-TCP address, when the worker listens on TCP.
    tcp_addr: Option<SocketAddr>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// False once the worker is gone for good (it could not be restarted): placement
    /// skips it.
    alive: Arc<std::sync::atomic::AtomicBool>,
}

/// Where an injected fault fires (tests of failure isolation and supervision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// While applying a command to the room.
    Command,
    /// When one of the room's peer connections' timers fires.
    Timer,
    /// While flushing one of the room's peer connections.
    Flush,
    /// In the worker's loop, outside every room's isolation: the worker restarts.
    Worker,
}

/// Where a room is: the workers with a copy of it and each one's participants (joins
/// under way included). The first is its home (recordings and administration go there).
struct Placement {
    copies: Vec<(usize, usize)>,
}

impl Placement {
    fn home(&self) -> usize {
        self.copies[0].0
    }

    fn participants(&self) -> usize {
        self.copies.iter().map(|(_, n)| n).sum()
    }
}

struct Inner {
    config: Arc<SfuConfig>,
    workers: Vec<WorkerHandle>,
    /// Each worker's link channel (what the cascade transport delivers goes there).
    links: Vec<mpsc::Sender<worker::relay::Link>>,
    /// Which worker hosts each room, with its participant count (for least-loaded placement).
    rooms: Mutex<HashMap<RoomId, Placement>>,
    /// Each worker's counters and loop timing, written by that worker only (no cache line
    /// shared across cores on the per-packet path) and summed when read.
    stats: Vec<Arc<SfuStats>>,
    timing: Vec<Arc<stats::LoopStats>>,
    next_key: AtomicU64,
    recordings: Mutex<HashMap<RoomId, control::Recording>>,
    /// Identities kicked from a room, kept out until their ban ends.
    bans: Mutex<expiring::Expiring<(RoomId, String), std::time::Instant>>,
    events: Option<mpsc::Sender<events::RoomEvent>>,
    /// Draining: no new joins, the meetings in progress go on.
    draining: std::sync::atomic::AtomicBool,
}

/// The media plane: a set of workers. Cheap to clone.
#[derive(Clone)]
pub struct Sfu {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu")
            .field("workers", &self.inner.workers.len())
            .finish()
    }
}

impl Sfu {
    /// Binds one media socket per worker and starts the worker threads.
    pub fn start(config: SfuConfig) -> Result<Sfu, StartError> {
        Self::start_with_events(config, None)
    }

    /// As [`Sfu::start`], sending room events (for webhooks) to `events`.
    pub fn start_with_events(
        config: SfuConfig,
        events: Option<mpsc::Sender<events::RoomEvent>>,
    ) -> Result<Sfu, StartError> {
        Self::start_cascaded(config, events, None)
    }

    /// As [`Sfu::start_with_events`], with rooms shared with other nodes: what the rooms'
    /// copies send to copies on other nodes goes to `remote` (the cascade transport,
    /// which hands back what comes from them to [`Sfu::deliver`]).
    pub fn start_cascaded(
        config: SfuConfig,
        events: Option<mpsc::Sender<events::RoomEvent>>,
        remote: Option<mpsc::Sender<worker::relay::Link>>,
    ) -> Result<Sfu, StartError> {
        config.validate().map_err(StartError::Config)?;
        let config = Arc::new(config);
        let mut stats = Vec::new();
        let mut timing = Vec::new();
        let provider =
            rtc::crypto::default_provider().map_err(|e| StartError::Certificate(e.to_string()))?;
        let mut workers = Vec::new();
        let mut link_in = Vec::new();
        // Every worker's link channel first: each worker gets a sender to all of them.
        let (links_out, mut links_in): (Vec<_>, Vec<_>) = (0..config.worker_count())
            .map(|_| mpsc::channel(worker::relay::LINK_CAPACITY))
            .unzip();
        let mut links_in: Vec<Option<_>> = links_in.drain(..).map(Some).collect();
        let links_out = worker::relay::Links {
            local: links_out,
            remote,
        };
        for i in 0..config.worker_count() {
            let port = if config.port == 0 {
                0
            } else {
                config.port + i as u16
            };
            let bind = SocketAddr::new(config.bind_ip, port);
            let socket =
                UdpSocket::bind(bind).map_err(|source| StartError::Bind { addr: bind, source })?;
            let local = socket
                .local_addr()
                .map_err(|source| StartError::Bind { addr: bind, source })?;
            let (rcv, snd) = udp::set_buffers(&socket, config.socket_buffer_bytes);
            tracing::debug!(%local, rcv, snd, "media socket buffers");
            let announce =
                SocketAddr::new(config.announce_ip.unwrap_or(config.bind_ip), local.port());
            // ICE-TCP on the same port number (TCP and UDP ports are apart). With an
            // ephemeral UDP port, that number may be taken on TCP: then any free port
            // (the candidate names it). A fixed port taken on TCP is a configuration
            // error worth a warning: this worker offers UDP only.
            let tcp = if config.tcp {
                let bound = std::net::TcpListener::bind(local).or_else(|e| {
                    if config.port == 0 {
                        std::net::TcpListener::bind(SocketAddr::new(local.ip(), 0))
                    } else {
                        Err(e)
                    }
                });
                match bound {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::warn!(%local, error = %e, "ICE-TCP: cannot listen; this worker offers UDP only");
                        None
                    }
                }
            } else {
                None
            };
            let certificate = rtc::peer_connection::certificate::RTCCertificate::generate(
                provider.crypto(),
                rtc::crypto::SignatureScheme::EcdsaP256Sha256,
                rtc::peer_connection::certificate::CertificateParams::new(vec!["confab".into()])
                    .map_err(|e| StartError::Certificate(e.to_string()))?,
            )
            .map_err(|e| StartError::Certificate(e.to_string()))?;
            let factory = peer::PeerFactory {
                announce,
                certificate,
                ice_disconnected_timeout: std::time::Duration::from_millis(
                    config.ice_disconnected_timeout_ms,
                ),
                ice_failed_timeout: std::time::Duration::from_millis(config.ice_failed_timeout_ms),
                max_nacks_per_packet: config.max_nacks_per_packet,
                tcp_port: tcp
                    .as_ref()
                    .and_then(|l| l.local_addr().ok())
                    .map(|a| a.port()),
            };
            let (tx, rx) = mpsc::channel(4096);
            let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
            stats.push(Arc::new(SfuStats::default()));
            timing.push(Arc::new(stats::LoopStats::default()));
            let tcp_addr = tcp
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map(|a| SocketAddr::new(announce.ip(), a.port()));
            let supervisor = Supervisor {
                index: i,
                socket,
                announce,
                factory,
                config: config.clone(),
                stats: stats[i].clone(),
                timing: timing[i].clone(),
                events: events.clone(),
                alive: alive.clone(),
                links_out: links_out.clone(),
                tcp,
            };
            let links = links_in[i].take().expect("one link receiver per worker");
            let thread = std::thread::Builder::new()
                .name(format!("confab-media-{i}"))
                .spawn(move || supervisor.run(rx, links))
                .map_err(StartError::Thread)?;
            link_in.push(links_out.local[i].clone());
            workers.push(WorkerHandle {
                commands: tx,
                addr: announce,
                tcp_addr,
                thread: Mutex::new(Some(thread)),
                alive,
            });
        }
        Ok(Sfu {
            inner: Arc::new(Inner {
                config,
                workers,
                links: link_in,
                rooms: Mutex::new(HashMap::new()),
                stats,
                timing,
                next_key: AtomicU64::new(1),
                recordings: Mutex::new(HashMap::new()),
                bans: Mutex::new(expiring::Expiring::new(control::MAX_BANS)),
                events,
                draining: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    pub fn config(&self) -> &SfuConfig {
        &self.inner.config
    }

    /// The announced media address of each worker.
    pub fn media_addrs(&self) -> Vec<SocketAddr> {
        self.inner.workers.iter().map(|w| w.addr).collect()
    }

    /// The announced ICE-TCP address of each worker that listens on TCP.
    pub fn media_tcp_addrs(&self) -> Vec<SocketAddr> {
        self.inner
            .workers
            .iter()
            .filter_map(|w| w.tcp_addr)
            .collect()
    }

    /// The workers' counters, summed.
    pub fn stats(&self) -> StatsSnapshot {
        let mut sum = StatsSnapshot::default();
        for s in &self.inner.stats {
            sum.merge(&s.snapshot());
        }
        sum
    }

    /// Loop timing: server-added forwarding latency (a packet's arrival at the socket to
    /// its last copy handed to the kernel), pass durations and timer lag.
    pub fn loop_stats(&self) -> stats::LoopSnapshot {
        let mut sum = stats::LoopSnapshot::default();
        for t in &self.inner.timing {
            sum.merge(&t.snapshot());
        }
        sum
    }

    /// Joins `room` as `name`, with what `opts` grants. On success the participant's first
    /// messages (`joined`, then an `offer`) are already queued on the returned receiver.
    pub async fn join(
        &self,
        room: RoomId,
        name: DisplayName,
        opts: JoinOptions,
    ) -> Result<(Participant, mpsc::Receiver<ServerMessage>), JoinError> {
        if let Some(who) = &opts.identity
            && let Some(seconds) = self.banned_for(&room, who)
        {
            return Err(JoinError::Banned {
                room: room.to_string(),
                seconds,
            });
        }
        let key = keys::ParticipantKey(self.inner.next_key.fetch_add(1, Ordering::Relaxed));
        // Keys count from 1 on every node: 32 random bits keep ids apart across the nodes
        // of a cascade.
        let id = ParticipantId::from_suffix(format!("{:x}{:08x}", key.0, rand::random::<u32>()));
        let (worker, copies) = self.place(&room)?;
        let (events_tx, events_rx) = mpsc::channel(self.inner.config.event_queue);
        let (reply_tx, reply_rx) = oneshot::channel();
        let commands = self.inner.workers[worker].commands.clone();
        let sent = commands
            .send(Command::Join {
                key,
                id: id.clone(),
                room: room.clone(),
                name,
                opts,
                events: events_tx,
                copies,
                reply: reply_tx,
            })
            .await;
        let result = match sent {
            Ok(()) => reply_rx.await.unwrap_or(Err(JoinError::ShuttingDown)),
            Err(_) => Err(JoinError::ShuttingDown),
        };
        if result.is_ok()
            && self.inner.config.recording.auto_records(room.as_str())
            && !self.is_recording(&room)
        {
            let sfu = self.clone();
            let r = room.clone();
            tokio::spawn(async move {
                match sfu.start_recording(&r).await {
                    Ok(dir) => {
                        tracing::info!(room = %r, dir = %dir.display(), "recording automatically")
                    }
                    Err(control::ControlError::AlreadyRecording(_)) => {}
                    Err(e) => tracing::warn!(room = %r, error = %e, "automatic recording failed"),
                }
            });
        }
        match result {
            Ok(()) => Ok((
                Participant {
                    key,
                    id,
                    room,
                    worker,
                    commands,
                    sfu: self.clone(),
                    left: false,
                },
                events_rx,
            )),
            Err(e) => {
                self.unplace(&room, worker);
                Err(e)
            }
        }
    }

    /// The worker a new participant of `room` joins, and the room's other copies: a new
    /// room goes to the least loaded worker (within the configured number of rooms); an
    /// open one to its copy with the fewest participants, and to a new copy on the least
    /// loaded other worker when every copy has `participants_per_worker` (0: a room
    /// stays on one worker).
    fn place(&self, room: &RoomId) -> Result<(usize, Vec<usize>), JoinError> {
        if self.is_draining() {
            return Err(JoinError::ShuttingDown);
        }
        let alive = |w: usize| self.inner.workers[w].alive.load(Ordering::Relaxed);
        let mut rooms = self.inner.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let mut load = vec![0usize; self.inner.workers.len()];
        for p in rooms.values() {
            for (w, n) in &p.copies {
                load[*w] += n + 1;
            }
        }
        if let Some(p) = rooms.get_mut(room) {
            // Copies on a worker that is gone for good are forgotten (their participants
            // were told).
            p.copies.retain(|(w, _)| alive(*w));
        }
        if let Some(p) = rooms.get_mut(room).filter(|p| !p.copies.is_empty()) {
            let per = self.inner.config.participants_per_worker;
            // The room-wide limit (each copy also checks its own participants).
            let max = self.inner.config.max_participants_per_room;
            if per > 0 && p.participants() >= max {
                return Err(JoinError::RoomFull {
                    room: room.to_string(),
                    max,
                });
            }
            let least = (0..p.copies.len())
                .min_by_key(|i| p.copies[*i].1)
                .unwrap_or(0);
            let i = if per > 0 && p.copies[least].1 >= per {
                let new = (0..load.len())
                    .filter(|w| alive(*w) && !p.copies.iter().any(|(c, _)| c == w))
                    .min_by_key(|w| load[*w]);
                match new {
                    Some(w) => {
                        tracing::info!(%room, worker = w, "room copied to another worker");
                        p.copies.push((w, 0));
                        p.copies.len() - 1
                    }
                    None => least,
                }
            } else {
                least
            };
            p.copies[i].1 += 1;
            let worker = p.copies[i].0;
            let others = p.copies.iter().map(|(w, _)| *w).filter(|w| *w != worker);
            return Ok((worker, others.collect()));
        }
        // A room on a worker that is gone for good starts afresh on another one (its
        // participants were told; their handles unplace a room that no longer counts).
        rooms.remove(room);
        let max = self.inner.config.max_rooms;
        if max > 0 && rooms.len() >= max {
            return Err(JoinError::TooManyRooms { max });
        }
        let worker = (0..load.len())
            .filter(|i| alive(*i))
            .min_by_key(|i| load[*i])
            .ok_or(JoinError::ShuttingDown)?;
        rooms.insert(
            room.clone(),
            Placement {
                copies: vec![(worker, 1)],
            },
        );
        Ok((worker, Vec::new()))
    }

    /// Hands a message from a copy on another node to this node's copies of its room: to
    /// worker `link.to`, or to every copy when it is [`worker::relay::ALL_REMOTE`].
    /// Returns how many copies it was queued for (a full channel drops it, as a
    /// congested link would).
    pub fn deliver(&self, mut link: worker::relay::Link) -> usize {
        let send = |w: usize, link: worker::relay::Link| {
            self.inner
                .links
                .get(w)
                .is_some_and(|tx| tx.try_send(link).is_ok())
        };
        // Media and answers go to one copy: no lock, no copy.
        if link.to != worker::relay::ALL_REMOTE {
            return usize::from(send(link.to, link));
        }
        let targets: Vec<usize> = {
            let rooms = self.inner.rooms.lock().unwrap_or_else(|e| e.into_inner());
            match rooms.get(link.room.as_ref()) {
                Some(p) => p.copies.iter().map(|(w, _)| *w).collect(),
                None => return 0,
            }
        };
        let Some((&last, rest)) = targets.split_last() else {
            return 0;
        };
        let mut n = 0;
        for &w in rest {
            let copy = worker::relay::Link {
                to: w,
                ..link.clone()
            };
            n += usize::from(send(w, copy));
        }
        link.to = last;
        n + usize::from(send(last, link))
    }

    /// Whether `room` is open here (it has participants, or a join into it is under way).
    pub fn hosts(&self, room: &RoomId) -> bool {
        let rooms = self.inner.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.contains_key(room)
    }

    /// The rooms open here, with their participants (joins under way included).
    pub fn hosted_rooms(&self) -> Vec<(RoomId, usize)> {
        let rooms = self.inner.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms
            .iter()
            .map(|(r, p)| (r.clone(), p.participants()))
            .collect()
    }

    fn unplace(&self, room: &RoomId, worker: usize) {
        let mut rooms = self.inner.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = rooms.get_mut(room) {
            if let Some(c) = p.copies.iter_mut().find(|(w, _)| *w == worker) {
                c.1 = c.1.saturating_sub(1);
            }
            p.copies.retain(|(_, n)| *n > 0);
            if p.copies.is_empty() {
                rooms.remove(room);
            }
        }
    }

    /// Makes the worker hosting `room` panic at `point` (tests of failure isolation and
    /// supervision). Returns whether the room exists.
    #[cfg(feature = "fault-injection")]
    pub async fn inject_panic(&self, room: &RoomId, point: FaultPoint) -> bool {
        let Some(worker) = self
            .inner
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room)
            .map(Placement::home)
        else {
            return false;
        };
        self.inner.workers[worker]
            .commands
            .send(Command::InjectPanic {
                room: room.clone(),
                point,
            })
            .await
            .is_ok()
    }

    /// Starts draining: joins are refused from now on (`server_shutting_down`), and every
    /// participant is told `message` (a non-fatal `server_shutting_down` error) while its
    /// meeting goes on. [`Sfu::shutdown`] ends what is left.
    pub async fn drain(&self, message: impl Into<String>) {
        self.inner.draining.store(true, Ordering::Relaxed);
        let message = ServerMessage::error(ErrorCode::ServerShuttingDown, message);
        for w in &self.inner.workers {
            let _ = w
                .commands
                .send(Command::Notice {
                    message: message.clone(),
                })
                .await;
        }
    }

    /// Whether a media worker is up to take joins (they are restarted after a panic; one
    /// that cannot be restarted is gone).
    pub fn serving(&self) -> bool {
        self.inner
            .workers
            .iter()
            .any(|w| w.alive.load(Ordering::Relaxed))
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Stops the media plane: every participant is told `server_shutting_down` and
    /// removed, new joins are refused, and the worker threads end. Waits for them.
    pub async fn shutdown(&self) {
        let recording: Vec<RoomId> = self
            .inner
            .recordings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for r in recording {
            let _ = self.stop_recording(&r).await;
        }
        for w in &self.inner.workers {
            let _ = w.commands.send(Command::Shutdown).await;
        }
        let threads: Vec<_> = self
            .inner
            .workers
            .iter()
            .filter_map(|w| w.thread.lock().unwrap_or_else(|e| e.into_inner()).take())
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// What a participant may do and who it is, from its access token (everything, and
/// nobody in particular, without one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinOptions {
    pub grants: confab_proto::signal::Grants,
    /// The token's subject: who this is, for logs, webhooks and the admin API, and what
    /// a kick bans (a join without one cannot be banned).
    pub identity: Option<String>,
    /// The token's id (`jti`): revoking it removes this participant.
    pub token_id: Option<String>,
    /// Sent back in `joined`: the signaling layer's key to resume this session.
    pub resume_token: String,
    /// The `join`'s request id, echoed on `joined`.
    pub request_id: Option<RequestId>,
}

/// One participant's handle on the media plane, held by its signaling session. Dropping
/// it leaves the room.
pub struct Participant {
    key: keys::ParticipantKey,
    id: ParticipantId,
    room: RoomId,
    /// The worker its copy of the room is on.
    worker: usize,
    commands: mpsc::Sender<Command>,
    sfu: Sfu,
    left: bool,
}

impl Participant {
    pub fn id(&self) -> &ParticipantId {
        &self.id
    }

    pub fn room(&self) -> &RoomId {
        &self.room
    }

    async fn send_command(&self, c: Command) {
        // The worker is gone only at shutdown, when the session ends anyway.
        let _ = self.commands.send(c).await;
    }

    /// Passes a validated client message (other than `join` and `leave`) to the room;
    /// its replies and refusals carry `request`.
    pub async fn send(&self, request: Option<RequestId>, msg: ClientMessage) {
        self.send_command(Command::Client {
            key: self.key,
            request,
            msg,
        })
        .await
    }

    /// Tells the worker the signaling connection dropped (the session is parked).
    pub async fn detach(&self) {
        self.send_command(Command::Detach { key: self.key }).await
    }

    /// Asks for a fresh `joined` (participants, config, grants) on the event channel: the
    /// session continues on a new connection.
    pub async fn resync(&self) {
        self.send_command(Command::Resync { key: self.key }).await
    }

    pub async fn leave(mut self) {
        self.left = true;
        self.send_command(Command::Leave { key: self.key }).await;
        self.sfu.unplace(&self.room, self.worker);
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        if self.left {
            return;
        }
        let leave = Command::Leave { key: self.key };
        if let Err(mpsc::error::TrySendError::Full(c)) = self.commands.try_send(leave) {
            let tx = self.commands.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tx.send(c).await;
                });
            }
        }
        self.sfu.unplace(&self.room, self.worker);
    }
}
