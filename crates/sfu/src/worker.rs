//! A media worker: one thread, one UDP socket, every peer connection of the rooms placed
//! on it, driven as sans-IO state machines from a single loop (the str0m shape).
//!
//! The worker is IO and translation only: it owns the socket, the peer connections and
//! their timers, and the signaling sessions' queues; the rooms ([`crate::room::Room`])
//! decide. One pass of the loop: receive datagrams and route each to its peer (STUN by
//! username fragment, everything else by remote address); fire due timers; apply
//! commands from signaling; drain the events of every peer that had input into its room
//! (which forwards RTP into other peers); apply what the rooms ask for; flush the output
//! of every peer touched. Nothing in the pass awaits, so a slow subscriber can only lose
//! its own datagrams (the kernel drops, we count), never stall the others.
//!
//! - [`drive`]: commands, peer events and room outputs.
//! - [`routing`]: which peer a datagram is for (addresses and ufrags), peers in and out.
//! - [`isolate`]: every entry into a room runs under `catch_unwind`; a panic closes that
//!   room only.

mod drive;
mod isolate;
pub mod relay;
mod routing;
pub mod tcp;

use crate::config::SfuConfig;
use crate::error::JoinError;
use crate::keys::{ParticipantKey, PeerKey, RoomKey};
use crate::peer::{Outgoing, Peer, PeerFactory, is_binding_success, is_stun};
use crate::room::{Removal, Room};
use crate::stats::{LoopStats, SfuStats};
use crate::udp;
use confab_proto::{
    ClientMessage, DisplayName, ParticipantId, RequestId, RoomId, ServerMessage, TrackId,
};
use rustc_hash::FxHashMap;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// `recvmmsg` calls per pass before the loop looks at timers and commands again.
const RECV_BATCHES: usize = 2;
/// Commands applied per pass, so that signaling cannot starve media (and vice versa).
const COMMAND_BATCH: usize = 32;
/// Relay links handled per pass at most (media of relayed tracks, mostly).
const LINK_BATCH: usize = 256;
/// Queued datagrams that are sent at once rather than at the end of the datagram batch
/// (bounds the wait of a large room's first copies, and the queue).
const FLUSH_AT: usize = 512;
/// Housekeeping period: keyframe re-requests, allocation, speakers, dynacast, deadlines.
const TICK: Duration = Duration::from_millis(100);

/// What signaling asks of a worker.
pub enum Command {
    Join {
        key: ParticipantKey,
        id: ParticipantId,
        room: RoomId,
        name: DisplayName,
        opts: crate::JoinOptions,
        events: mpsc::Sender<ServerMessage>,
        /// Workers with a copy of the room (the room may be placed on several: issue 15).
        copies: Vec<usize>,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    /// A validated client message other than `join` and `leave`.
    Client {
        key: ParticipantKey,
        request: Option<RequestId>,
        msg: ClientMessage,
    },
    Leave {
        key: ParticipantKey,
    },
    /// The participant's signaling connection dropped; it may come back ([`Command::Resync`]).
    Detach {
        key: ParticipantKey,
    },
    /// Send the participant a fresh `joined` (its session resumed on a new connection),
    /// and again the subscriber offer it may have lost with the old connection.
    Resync {
        key: ParticipantKey,
    },
    /// Tell every participant `message` (the server is draining).
    Notice {
        message: ServerMessage,
    },
    /// Remove everyone (they are told `server_shutting_down`), refuse joins, then stop.
    Shutdown,
    /// Panic while handling `room` at `point` (tests of failure isolation).
    #[cfg(feature = "fault-injection")]
    InjectPanic {
        room: RoomId,
        point: crate::FaultPoint,
    },
    /// Start delivering a room's media to a recording or hook session; `false` when the
    /// room does not exist here.
    AddTap {
        room: RoomId,
        tap: crate::sink::Tap,
        reply: oneshot::Sender<bool>,
    },
    RemoveTap {
        room: RoomId,
        tap: u64,
    },
    /// A recording has a gap in `track`: ask its publisher for a keyframe.
    TapKeyframe {
        room: RoomId,
        track: TrackId,
    },
    /// Administration.
    Inspect {
        reply: oneshot::Sender<Vec<RoomSummary>>,
    },
    /// Removes a participant; replies `None` when there is no such one, else its
    /// identity (what a ban keeps out).
    Kick {
        room: RoomId,
        participant: ParticipantId,
        reply: oneshot::Sender<Option<Option<String>>>,
    },
    /// Removes every participant that joined with the token `jti` (it was revoked);
    /// replies how many.
    RevokeToken {
        jti: String,
        reply: oneshot::Sender<usize>,
    },
    MuteTrack {
        room: RoomId,
        track: TrackId,
        muted: bool,
        reply: oneshot::Sender<bool>,
    },
    CloseRoom {
        room: RoomId,
        reply: oneshot::Sender<bool>,
    },
}

/// A room as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoomSummary {
    pub room: RoomId,
    pub participants: Vec<confab_proto::ParticipantInfo>,
    pub recording: bool,
    pub worker: usize,
    /// Tracks this copy relays to the room's copies on other workers.
    pub relays: Vec<crate::room::RelaySummary>,
    /// Participants of the room's copies on other nodes: where each one is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub elsewhere: Vec<Elsewhere>,
}

/// A participant of a copy of the room on another node, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Elsewhere {
    pub participant: confab_proto::ParticipantInfo,
    /// The node (filled in by the cascade transport's owner) and its worker.
    pub node: Option<String>,
    pub worker: Option<u32>,
    /// The copy's key in this media plane.
    #[serde(skip)]
    pub copy: usize,
}

/// A participant's signaling session as the worker knows it: where its messages go and
/// which connections are its.
struct Session {
    room: RoomKey,
    events: mpsc::Sender<ServerMessage>,
    sub: PeerKey,
    publ: Option<PeerKey>,
}

pub struct Worker {
    index: usize,
    socket: UdpSocket,
    announce: SocketAddr,
    factory: PeerFactory,
    config: Arc<SfuConfig>,
    stats: Arc<SfuStats>,
    next_peer: u64,
    peers: FxHashMap<PeerKey, Peer>,
    by_ufrag: HashMap<String, PeerKey>,
    by_addr: FxHashMap<SocketAddr, PeerKey>,
    timers: BTreeSet<(Instant, PeerKey)>,
    /// Peers that had input this pass: their events must be drained.
    input: Vec<PeerKey>,
    /// Peers that may have output this pass: their datagrams must be flushed.
    touched: Vec<PeerKey>,
    /// For each touched peer, whether its timers may have moved (false when only
    /// forwarded RTP was written to it).
    touched_flag: FxHashMap<PeerKey, bool>,
    /// Subscribers whose pacer began holding packets in this forward (their timer moved).
    paced: Vec<PeerKey>,
    recv: Option<udp::RecvBatch>,
    send: udp::SendBatch,
    rooms: slab::Slab<Room>,
    room_keys: HashMap<RoomId, RoomKey>,
    sessions: FxHashMap<ParticipantKey, Session>,
    /// Participants to remove at the end of the pass (failed connection, slow consumer).
    doomed: Vec<(ParticipantKey, Removal)>,
    stopping: bool,
    /// When the datagram batch being handled was read, and how many of its RTP packets
    /// were forwarded and not yet sent: a forwarded packet's server-added latency ends when
    /// its last copy is handed to the kernel.
    rx_at: Option<Instant>,
    forwarded: u64,
    /// The marshalled packet before encryption, reused for every copy.
    scratch: Vec<u8>,
    timing: Arc<LoopStats>,
    /// Room events for webhooks.
    events: Option<mpsc::Sender<crate::events::RoomEvent>>,
    /// Senders to every worker's link channel (by worker index), and the copies of this
    /// worker's rooms on other workers ([`relay`]).
    links_out: relay::Links,
    copies: FxHashMap<RoomKey, (Arc<RoomId>, Vec<usize>)>,
    /// ICE-TCP: the listener, its port, the open connections by the client's address
    /// (where frames to that address go), and the channel their frames come in on.
    tcp: Option<tokio::net::TcpListener>,
    tcp_local: Option<SocketAddr>,
    tcp_conns: FxHashMap<SocketAddr, mpsc::Sender<bytes::Bytes>>,
    tcp_tx: mpsc::Sender<tcp::TcpIn>,
    tcp_rx: Option<mpsc::Receiver<tcp::TcpIn>>,
    /// Test hook: panic in this room at this point.
    #[cfg(feature = "fault-injection")]
    fault: Option<(RoomKey, crate::FaultPoint)>,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        socket: std::net::UdpSocket,
        announce: SocketAddr,
        factory: PeerFactory,
        config: Arc<SfuConfig>,
        stats: Arc<SfuStats>,
        timing: Arc<LoopStats>,
        events: Option<mpsc::Sender<crate::events::RoomEvent>>,
        links_out: relay::Links,
        tcp: Option<std::net::TcpListener>,
    ) -> std::io::Result<Self> {
        socket.set_nonblocking(true)?;
        let tcp = match tcp {
            Some(l) => {
                l.set_nonblocking(true)?;
                Some(tokio::net::TcpListener::from_std(l)?)
            }
            None => None,
        };
        let tcp_local = tcp
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| SocketAddr::new(announce.ip(), a.port()));
        let (tcp_tx, tcp_rx) = mpsc::channel(4_096);
        let gso = config.gso && udp::gso_supported(&socket);
        tracing::debug!(gso, "UDP segmentation offload");
        Ok(Self {
            index,
            socket: UdpSocket::from_std(socket)?,
            announce,
            factory,
            config,
            stats,
            next_peer: 1,
            peers: FxHashMap::default(),
            by_ufrag: HashMap::new(),
            by_addr: FxHashMap::default(),
            timers: BTreeSet::new(),
            input: Vec::new(),
            touched: Vec::new(),
            touched_flag: FxHashMap::default(),
            paced: Vec::new(),
            recv: Some(udp::RecvBatch::default()),
            send: udp::SendBatch::with_gso(gso),
            rooms: slab::Slab::new(),
            room_keys: HashMap::new(),
            sessions: FxHashMap::default(),
            doomed: Vec::new(),
            stopping: false,
            rx_at: None,
            forwarded: 0,
            scratch: Vec::with_capacity(udp::MAX_DATAGRAM),
            timing,
            events,
            links_out,
            copies: FxHashMap::default(),
            tcp,
            tcp_local,
            tcp_conns: FxHashMap::default(),
            tcp_tx,
            tcp_rx: Some(tcp_rx),
            #[cfg(feature = "fault-injection")]
            fault: None,
        })
    }

    /// Runs until told to shut down (or every command sender is gone) and everyone left.
    /// Returns `true` on a shutdown; a panic that escapes every room's isolation unwinds
    /// out of here (the thread restarts the worker, see [`crate::Sfu`]).
    pub async fn run(
        mut self,
        commands: &mut mpsc::Receiver<Command>,
        links: &mut mpsc::Receiver<relay::Link>,
    ) {
        let span = tracing::info_span!("worker", index = self.index);
        let _g = span.enter();
        tracing::info!(addr = %self.announce, "media worker started");
        let mut next_tick = Instant::now() + TICK;
        let mut open = true;
        let mut tcp_rx = self.tcp_rx.take();
        while !self.stopping || !self.sessions.is_empty() {
            let deadline = self
                .timers
                .first()
                .map_or(next_tick, |(t, _)| (*t).min(next_tick));
            tokio::select! {
                r = self.socket.readable() => {
                    if r.is_ok() {
                        self.receive();
                    }
                }
                c = commands.recv(), if open => {
                    match c {
                        Some(c) => {
                            self.isolated_command(c);
                            for _ in 1..COMMAND_BATCH {
                                match commands.try_recv() {
                                    Ok(c) => self.isolated_command(c),
                                    Err(_) => break,
                                }
                            }
                        }
                        None => {
                            open = false;
                            self.stop();
                        }
                    }
                }
                a = async {
                    match &self.tcp {
                        Some(l) => l.accept().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Ok((stream, from)) = a {
                        self.tcp_accepted(stream, from);
                    }
                }
                t = async {
                    match tcp_rx.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(t) = t {
                        self.tcp_frame(t, Instant::now());
                        for _ in 1..LINK_BATCH {
                            match tcp_rx.as_mut().map(|rx| rx.try_recv()) {
                                Some(Ok(t)) => self.tcp_frame(t, Instant::now()),
                                _ => break,
                            }
                        }
                    }
                }
                l = links.recv() => {
                    if let Some(l) = l {
                        self.isolated_link(l);
                        for _ in 1..LINK_BATCH {
                            match links.try_recv() {
                                Ok(l) => self.isolated_link(l),
                                Err(_) => break,
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            let now = Instant::now();
            if now > deadline {
                self.timing
                    .timer_lag
                    .record((now - deadline).as_micros() as u64);
            }
            self.fire_timers(now);
            if now >= next_tick {
                self.tick(now);
                next_tick = now + TICK;
            }
            self.end_of_pass();
            self.timing
                .pass_time
                .record(now.elapsed().as_micros() as u64);
        }
        tracing::info!("media worker stopped");
    }

    /// Refuses new joins and removes everyone, telling them why.
    pub(crate) fn stop(&mut self) {
        self.stopping = true;
        let keys: Vec<_> = self.sessions.keys().copied().collect();
        for k in keys {
            self.doomed.push((k, Removal::Shutdown));
        }
    }

    fn receive(&mut self) {
        for _ in 0..RECV_BATCHES {
            // Taken out for the pass so that routing (which needs `&mut self`) can borrow
            // the datagrams; put back below.
            let Some(mut recv) = self.recv.take() else {
                return;
            };
            let n = match recv.recv(&self.socket) {
                Ok(0) => {
                    self.recv = Some(recv);
                    break;
                }
                Ok(n) => n,
                Err(e) => {
                    // ICMP errors (a peer went away) surface here on Linux; they concern
                    // one remote only.
                    tracing::trace!(error = %e, "recvmmsg");
                    0
                }
            };
            let now = Instant::now();
            self.rx_at = Some(now);
            let mut datagrams = recv.datagrams().peekable();
            while let Some((data, from)) = datagrams.next() {
                SfuStats::add(&self.stats.bytes_in, data.len() as u64);
                self.isolated(isolate::Scope::From(from), "a datagram", |w| {
                    w.datagram(data, from, now)
                });
                // Forwarded copies leave once the sender's consecutive datagrams are
                // handled: a frame's packets arrive together, and their copies to one
                // viewer go as one GSO send; another sender's packet does not wait.
                if self.forwarded > 0 && datagrams.peek().is_none_or(|(_, next)| *next != from) {
                    self.send_now();
                }
            }
            drop(datagrams);
            // Counted once handled, so that a reader seeing the count sees their effects.
            SfuStats::add(&self.stats.datagrams_in, n as u64);
            self.recv = Some(recv);
            if n < udp::BATCH {
                break;
            }
        }
    }

    fn datagram(&mut self, data: &[u8], from: SocketAddr, now: Instant) {
        self.datagram_on(data, from, false, now);
    }

    /// A datagram, or an ICE-TCP frame (`tcp`), from `from`.
    fn datagram_on(&mut self, data: &[u8], from: SocketAddr, tcp: bool, now: Instant) {
        let key = if is_stun(data) {
            crate::peer::stun_target_ufrag(data)
                .and_then(|u| self.by_ufrag.get(&u).copied())
                .or_else(|| self.by_addr.get(&from).copied())
        } else {
            self.by_addr.get(&from).copied()
        };
        let Some(key) = key else {
            SfuStats::inc(&self.stats.datagrams_unroutable);
            return;
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let authenticated = peer.addrs.contains(&from);
        let shown = peer.paths.inbound(data, from, authenticated);
        let local = match (tcp, self.tcp_local) {
            (true, Some(l)) => l,
            _ => self.announce,
        };
        peer.handle_datagram(data, local, shown, tcp, now);
        let publisher = peer.role == crate::peer::Role::Publisher;
        self.mark_input(key);
        if publisher {
            // Forward the packet now (its copies leave before the next datagram is
            // handled), rather than at the end of the pass.
            self.drain_peer(key);
        }
    }

    fn mark_input(&mut self, key: PeerKey) {
        self.input.push(key);
        self.mark_touched(key);
    }

    /// The peer may have output, and its protocol timers may have moved.
    fn mark_touched(&mut self, key: PeerKey) {
        if self.touched_flag.insert(key, true).is_none() {
            self.touched.push(key);
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&(t, key)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            self.isolated(isolate::Scope::Peer(key), "a timer", |w| {
                let Some(room) = w.peers.get(&key).map(|p| p.room) else {
                    return;
                };
                w.fault_point(room, crate::FaultPoint::Timer);
                if let Some(peer) = w.peers.get_mut(&key) {
                    peer.timer = None;
                    peer.handle_timeout(now);
                    w.mark_input(key);
                }
            });
        }
    }

    /// Drains inputs (which may touch more peers), removes failed participants, then
    /// flushes every touched peer.
    fn end_of_pass(&mut self) {
        let mut guard = 0;
        while !self.input.is_empty() || !self.doomed.is_empty() {
            let input = std::mem::take(&mut self.input);
            for key in input {
                self.isolated(isolate::Scope::Peer(key), "a peer's events", |w| {
                    w.drain_peer(key)
                });
            }
            let doomed = std::mem::take(&mut self.doomed);
            for (key, why) in doomed {
                self.remove_isolated(key, why);
            }
            guard += 1;
            if guard > 8 {
                break;
            }
        }
        self.flush();
        self.rx_at = None;
    }

    /// Records the server-added latency of the packets forwarded since the last send.
    fn forwarded_sent(&mut self) {
        if let Some(rx) = self.rx_at
            && self.forwarded > 0
        {
            let us = Instant::now().saturating_duration_since(rx).as_micros() as u64;
            for _ in 0..self.forwarded {
                self.timing.forward_latency.record(us);
            }
        }
        self.forwarded = 0;
    }

    fn flush(&mut self) {
        let touched = std::mem::take(&mut self.touched);
        for key in touched {
            self.isolated(isolate::Scope::Peer(key), "a flush", |w| w.flush_peer(key));
        }
        self.touched_flag.clear();
        self.send_now();
    }

    fn flush_peer(&mut self, key: PeerKey) {
        let timer_dirty = self.touched_flag.get(&key).copied().unwrap_or(true);
        if let Some(p) = self.peers.get(&key) {
            self.fault_point(p.room, crate::FaultPoint::Flush);
        }
        loop {
            let Some(out) = self.peers.get_mut(&key).and_then(|p| p.poll_write()) else {
                break;
            };
            let (data, to) = match out {
                Outgoing::Media(data, to) => (data, to),
                Outgoing::Agent(data, to) => {
                    if is_binding_success(&data) {
                        self.learn_addr(key, to);
                    }
                    let to = match self.peers.get_mut(&key) {
                        Some(p) => p.paths.outbound(&data, to),
                        None => to,
                    };
                    (data, to)
                }
            };
            self.send.push(data, to);
        }
        if !timer_dirty {
            // Only forwarded RTP was written: no protocol timer moved.
            return;
        }
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let next = peer.poll_timeout();
        if next != peer.timer {
            if let Some(old) = peer.timer {
                self.timers.remove(&(old, key));
            }
            if let Some(t) = next {
                self.timers.insert((t, key));
            }
            peer.timer = next;
        }
    }

    fn send_now(&mut self) {
        if self.send.is_empty() {
            return;
        }
        if !self.tcp_conns.is_empty() {
            let conns = &self.tcp_conns;
            let stats = &self.stats;
            self.send.divert(|data, to| match conns.get(&to) {
                Some(tx) => {
                    if tx.try_send(data.clone()).is_err() {
                        SfuStats::inc(&stats.send_drops);
                    } else {
                        SfuStats::inc(&stats.datagrams_out);
                        SfuStats::add(&stats.bytes_out, data.len() as u64);
                    }
                    true
                }
                None => false,
            });
        }
        let sent = self.send.flush(&self.socket);
        self.forwarded_sent();
        SfuStats::add(&self.stats.datagrams_out, sent.datagrams);
        SfuStats::add(&self.stats.segmented_sends, sent.segmented);
        SfuStats::add(&self.stats.bytes_out, sent.bytes);
        SfuStats::add(&self.stats.send_drops, sent.dropped);
    }

    /// An ICE-TCP connection was accepted: its frames come in as datagrams from `from`.
    fn tcp_accepted(&mut self, stream: tokio::net::TcpStream, from: SocketAddr) {
        if self.tcp_conns.len() >= tcp::MAX_CONNECTIONS {
            SfuStats::inc(&self.stats.tcp_refused);
            tcp::log_refusal(tcp::Refused::Full);
            return;
        }
        let stats = self.stats.clone();
        let tx = tcp::spawn(stream, from, self.tcp_tx.clone(), move |why| {
            SfuStats::inc(&stats.tcp_refused);
            tcp::log_refusal(why);
        });
        self.tcp_conns.insert(from, tx);
        SfuStats::gauge(&self.stats.tcp_connections, 1);
    }

    fn tcp_frame(&mut self, t: tcp::TcpIn, now: Instant) {
        match t.frame {
            Some(frame) => {
                SfuStats::inc(&self.stats.datagrams_in);
                SfuStats::add(&self.stats.bytes_in, frame.len() as u64);
                self.datagram_on(&frame, t.from, true, now);
            }
            None => {
                if self.tcp_conns.remove(&t.from).is_some() {
                    SfuStats::gauge(&self.stats.tcp_connections, -1);
                }
            }
        }
    }

    /// Queues a message to a participant's signaling session. A session that does not
    /// keep up is removed rather than allowed to grow memory.
    fn send_to(&mut self, key: ParticipantKey, msg: ServerMessage) {
        let Some(s) = self.sessions.get(&key) else {
            return;
        };
        match s.events.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                SfuStats::inc(&self.stats.events_dropped);
                self.doomed.push((key, Removal::SlowConsumer));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.doomed.push((key, Removal::SessionGone));
            }
        }
    }

    /// A room event for webhooks; dropped (and counted) if the consumer is behind.
    fn emit(&self, ev: crate::events::RoomEvent) {
        if let Some(tx) = &self.events
            && tx.try_send(ev).is_err()
        {
            SfuStats::inc(&self.stats.room_events_dropped);
        }
    }

    /// Test hook: panics if a fault was injected for `room` at `point`.
    #[cfg(feature = "fault-injection")]
    fn fault_point(&mut self, room: RoomKey, point: crate::FaultPoint) {
        if self.fault == Some((room, point)) {
            self.fault = None;
            panic!("injected fault at {point:?}");
        }
    }

    #[cfg(not(feature = "fault-injection"))]
    fn fault_point(&mut self, _room: RoomKey, _point: crate::FaultPoint) {}
}

/// A worker that panics beyond every room's isolation is dropped while unwinding: its
/// participants are told (a fatal `internal`; their clients rejoin) and the gauges it
/// held are given back, before the thread starts a fresh worker on the same socket.
impl Drop for Worker {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let notice = ServerMessage::fatal(
            confab_proto::ErrorCode::Internal,
            "the media worker hosting this room failed and was restarted; join again",
        );
        for s in self.sessions.values() {
            let _ = s.events.try_send(notice.clone());
        }
        let g = |c: &std::sync::atomic::AtomicI64, n: usize| SfuStats::gauge(c, -(n as i64));
        g(&self.stats.participants, self.sessions.len());
        g(&self.stats.peer_connections, self.peers.len());
        g(&self.stats.tcp_connections, self.tcp_conns.len());
        g(&self.stats.rooms, self.rooms.len());
        for (_, r) in self.rooms.iter() {
            let (tracks, downs, taps) = r.counts();
            g(&self.stats.published_tracks, tracks);
            g(&self.stats.down_tracks, downs);
            g(&self.stats.recordings, taps);
        }
        // The other copies of its rooms forget this one's participants.
        for (room, copies) in self.copies.values() {
            let remote = self.links_out.remote.is_some().then_some(relay::ALL_REMOTE);
            for to in copies
                .iter()
                .copied()
                .filter(|to| *to < relay::REMOTE)
                .chain(remote)
            {
                if let Some(tx) = self.links_out.get(to) {
                    let _ = tx.try_send(relay::Link {
                        room: room.clone(),
                        from: self.index,
                        to,
                        frame: relay::Frame::Gone,
                    });
                }
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
