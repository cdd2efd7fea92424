//! The relay link loop: media and upstream messages over UDP to and from the other
//! nodes, NACKs from a history per link, pings, liveness; facts handed to the writer and
//! taken from the reader.

use super::facts::{ReadEntry, Write};
use super::*;

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
pub(super) struct LinkLoop {
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
    /// A relayed packet, marshalled (reused from packet to packet).
    rtp: Vec<u8>,
    /// Ping stamps count from here.
    epoch: Instant,
}

impl LinkLoop {
    pub(super) fn new(
        node: String,
        key: Key,
        socket: UdpSocket,
        sfu: Sfu,
        write: mpsc::Sender<Write>,
        dead_after: Duration,
        shared: Arc<Shared>,
    ) -> LinkLoop {
        LinkLoop {
            node,
            key,
            socket,
            sfu,
            write,
            peers: Vec::new(),
            slots: HashMap::new(),
            rooms: HashMap::new(),
            dead_after,
            shared,
            refused_logged: HashSet::new(),
            rtp: Vec::with_capacity(1_500),
            epoch: Instant::now(),
        }
    }

    pub(super) async fn run(
        mut self,
        mut from_sfu: mpsc::Receiver<Link>,
        mut entries: mpsc::Receiver<ReadEntry>,
    ) {
        let mut buf = vec![0u8; 2_048];
        // Where a sealed datagram is opened (what it decodes to points into it).
        let mut opened = Vec::with_capacity(2_048);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                l = from_sfu.recv() => match l {
                    Some(l) => {
                        self.outbound(l);
                        while let Ok(l) = from_sfu.try_recv() {
                            self.outbound(l);
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
                        self.datagram(&buf[..n], from, &mut opened);
                        while let Ok((n, from)) = self.socket.try_recv_from(&mut buf) {
                            self.datagram(&buf[..n], from, &mut opened);
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

    /// Hands a fact to the writer, in order. Never waits: the writer queues what Redis
    /// cannot take yet, and a writer so far behind that its channel is full loses the
    /// fact (counted) rather than stall the media on this loop.
    fn write(&self, w: Write) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.write.try_send(w) {
            self.shared
                .counters
                .facts_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What a copy here sends to other nodes.
    fn outbound(&mut self, l: Link) {
        let worker = l.from as u8;
        if l.to == ALL_REMOTE {
            let room = l.room.to_string();
            match l.frame {
                Frame::Fact(Fact::Hello) => {
                    let copies = self.rooms.entry(room).or_default();
                    copies.room = Some(l.room.clone());
                    copies.local.insert(worker);
                    self.write(Write::Hello {
                        room: l.room,
                        worker,
                    });
                }
                Frame::Fact(f) => {
                    let json = serde_json::to_string(&Entry::Fact(Box::new(f))).unwrap_or_default();
                    self.write(Write::Entry {
                        room,
                        worker,
                        to: None,
                        json,
                    });
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
                    self.write(Write::Closed { room, worker, last });
                }
                _ => {}
            }
            return;
        }
        let (slot, to) = split_key(l.to);
        let Some(peer) = self.peers.get(slot as usize) else {
            return;
        };
        match l.frame {
            Frame::Fact(f) => {
                let (room, node) = (l.room.to_string(), peer.id.clone());
                let json = serde_json::to_string(&Entry::Fact(Box::new(f))).unwrap_or_default();
                self.write(Write::Entry {
                    room,
                    worker,
                    to: Some((node, to)),
                    json,
                });
            }
            Frame::Media { track, packet, .. } => {
                // The marshalled packet in a buffer reused packet after packet.
                let mut rtp = std::mem::take(&mut self.rtp);
                if encode_rtp(&packet, &mut rtp) {
                    self.send_media(
                        slot,
                        Kind::Media {
                            room: l.room.as_str(),
                            from: worker,
                            to,
                            track: track.as_str(),
                            sent_us: unix_us(),
                            rtp: &rtp,
                        },
                    );
                }
                self.rtp = rtp;
            }
            Frame::Upstream(u) => {
                let Ok(json) = serde_json::to_vec(&u) else {
                    return;
                };
                self.send(
                    slot,
                    0,
                    Kind::Upstream {
                        room: l.room.as_str(),
                        from: worker,
                        to,
                        json: &json,
                    },
                );
            }
            _ => {}
        }
    }

    fn send_media(&mut self, slot: u32, kind: Kind<'_>) {
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
            node: &self.node,
            seq,
            kind,
        };
        let bytes = wire::encode(&mut self.key, &d);
        self.transmit(&bytes, addr);
        let peer = &mut self.peers[slot as usize];
        peer.stats.packets_sent += 1;
        peer.remember(seq, bytes);
    }

    fn send(&mut self, slot: u32, seq: u32, kind: Kind<'_>) {
        let Some(addr) = self.peers.get(slot as usize).and_then(|p| p.addr) else {
            return;
        };
        let d = Datagram {
            node: &self.node,
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

    fn datagram(&mut self, data: &[u8], from: SocketAddr, opened: &mut Vec<u8>) {
        if self.shared.partitioned.load(Ordering::Relaxed) {
            return;
        }
        let d = match wire::decode(&mut self.key, data, opened) {
            Ok(d) => d,
            Err(wire::WireError::Foreign) => return self.refused("not a relay datagram", from),
            Err(wire::WireError::Unauthentic) => return self.refused("not authentic", from),
            Err(wire::WireError::Malformed) => return self.refused("malformed", from),
        };
        if d.node == self.node {
            return;
        }
        let now = Instant::now();
        let slot = self.slot(d.node);
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
                    .epoch
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
                let Some(packet) = decode_rtp(rtp) else {
                    let addr = from_addr(&self.peers[slot as usize]);
                    return self.refused("not RTP", addr);
                };
                let Some(room) = self.rooms.get(room).and_then(|c| c.room.clone()) else {
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
                let Ok(u) = serde_json::from_slice::<Upstream>(json) else {
                    return;
                };
                let Some(room) = self.rooms.get(room).and_then(|c| c.room.clone()) else {
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
        let stamp = self.epoch.elapsed().as_micros() as u64;
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
