//! Links between the copies of a room on this node's workers (issue 15): each worker has
//! one bounded inbound channel of [`Link`]s, and a sender to every other worker's. Over
//! it go the room's facts (who joined, left, published; chat), the media of relayed
//! tracks (each packet once per copy that wants its layer, as received: no SRTP, no
//! system call) and what flows back upstream (layer wants, keyframe requests).
//!
//! With several nodes (cascade mode), a room's copies on other nodes are reached the same
//! way: their keys are [`REMOTE`] and above, and what goes to them is handed to the
//! node's cascade transport ([`Links::remote`], which carries it over Redis and UDP) and
//! comes back through [`crate::Sfu::deliver`].
//!
//! Media is sent with `try_send`: a full channel drops the packet and counts it
//! (`relay_dropped`), as a congested network would; facts wait for room in the channel
//! only up to its capacity and are otherwise dropped, counted and logged (a copy that
//! misses a fact is out of step until the participant's next change).

use super::Worker;
use crate::keys::RoomKey;
use crate::room::{Fact, RelayKey, Upstream};
use crate::stats::SfuStats;
use confab_proto::{RoomId, TrackId};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// How long a new copy holds its first participants' `joined` for the other copies'
/// snapshots at most (a copy that emptied meanwhile never answers).
const SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Links one worker may have queued toward another.
pub const LINK_CAPACITY: usize = 8192;

/// Copies on other nodes have keys from here on (the cascade transport numbers them).
pub const REMOTE: usize = 1 << 31;
/// Every copy of the room on other nodes (facts broadcast through the transport).
pub const ALL_REMOTE: usize = u32::MAX as usize;

/// One message from a copy of `room` on worker `from` (or a remote copy, from
/// [`REMOTE`] up) to the copy at `to`.
#[derive(Debug, Clone)]
pub struct Link {
    pub room: Arc<RoomId>,
    pub from: usize,
    pub to: usize,
    pub frame: Frame,
}

/// Where a worker's links go: the other workers' channels, and the cascade transport's.
#[derive(Debug, Clone, Default)]
pub struct Links {
    pub local: Vec<mpsc::Sender<Link>>,
    pub remote: Option<mpsc::Sender<Link>>,
}

impl Links {
    pub fn get(&self, to: usize) -> Option<&mpsc::Sender<Link>> {
        if to >= REMOTE {
            self.remote.as_ref()
        } else {
            self.local.get(to)
        }
    }
}

#[derive(Debug, Clone)]
pub enum Frame {
    Fact(Fact),
    Media {
        track: TrackId,
        packet: rtc::rtp::Packet,
        /// When the packet reached the home worker's socket (server-added latency is
        /// measured from there to the last copy sent, relay hop included).
        at: Instant,
    },
    Upstream(Upstream),
    /// The copy on `from` closed (the room emptied there).
    Gone,
    /// From the cascade transport to a new copy: how many copies on other nodes will
    /// answer its hello.
    Expect(usize),
    /// From the cascade transport: the link to a node came back after it was declared
    /// gone; say hello again (both sides exchange snapshots).
    Resync,
}

/// A relayed packet as bytes (for a relay link between nodes), into `out` (cleared
/// first, reused by the caller). Returns whether it could be marshalled.
pub fn encode_rtp(packet: &rtc::rtp::Packet, out: &mut Vec<u8>) -> bool {
    use rtc::shared::marshal::{Marshal, MarshalSize};
    out.clear();
    out.resize(packet.marshal_size(), 0);
    match packet.marshal_to(out) {
        Ok(n) => {
            out.truncate(n);
            true
        }
        Err(_) => false,
    }
}

/// A relayed packet from bytes; `None` if they are not RTP.
pub fn decode_rtp(mut data: &[u8]) -> Option<rtc::rtp::Packet> {
    <rtc::rtp::Packet as rtc::shared::marshal::Unmarshal>::unmarshal(&mut data).ok()
}

/// Sends one relayed packet (from inside the fan-out, which holds the room).
#[allow(clippy::too_many_arguments)]
pub(super) fn send_media(
    links: &Links,
    index: usize,
    stats: &SfuStats,
    room: &Arc<RoomId>,
    to: RelayKey,
    track: &TrackId,
    packet: rtc::rtp::Packet,
    at: Instant,
) -> bool {
    let Some(tx) = links.get(to.0 as usize) else {
        return false;
    };
    let link = Link {
        room: room.clone(),
        from: index,
        to: to.0 as usize,
        frame: Frame::Media {
            track: track.clone(),
            packet,
            at,
        },
    };
    match tx.try_send(link) {
        Ok(()) => {
            SfuStats::inc(&stats.relayed_packets);
            true
        }
        Err(_) => {
            SfuStats::inc(&stats.relay_dropped);
            false
        }
    }
}

impl Worker {
    /// Sends `frame` about room `rk` to the copy on worker `to`.
    pub(super) fn link_send(&mut self, rk: RoomKey, to: usize, frame: Frame) {
        let Some((room, _)) = self.copies.get(&rk) else {
            return;
        };
        let Some(tx) = self.links_out.get(to) else {
            return;
        };
        let link = Link {
            room: room.clone(),
            from: self.index,
            to,
            frame,
        };
        match tx.try_send(link) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                SfuStats::inc(&self.stats.relay_dropped);
                tracing::warn!(to, "relay link full: a room fact was dropped");
            }
            // The other end stopped (a node shutting down): nobody to tell.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Tells every other copy of room `rk` a fact.
    pub(super) fn tell_copies(&mut self, rk: RoomKey, fact: Fact) {
        let Some((_, copies)) = self.copies.get(&rk) else {
            return;
        };
        let copies = copies.clone();
        for to in copies.into_iter().filter(|to| *to < REMOTE) {
            self.link_send(rk, to, Frame::Fact(fact.clone()));
        }
        // With other nodes, every fact goes to the room's stream: a copy there that is
        // still being made reads it after its hello, whether this one knows of it yet.
        if self.links_out.remote.is_some() {
            self.link_send(rk, ALL_REMOTE, Frame::Fact(fact));
        }
    }

    /// Room `rk` was just created here while it has copies on `others`: say hello (they
    /// answer with what they know).
    pub(super) fn open_copy(&mut self, rk: RoomKey, room: &RoomId, others: Vec<usize>) {
        let others: Vec<usize> = others.into_iter().filter(|w| *w != self.index).collect();
        let cascade = self.links_out.remote.is_some();
        if others.is_empty() && !cascade {
            return;
        }
        self.copies
            .insert(rk, (Arc::new(room.clone()), others.clone()));
        if let Some(r) = self.rooms.get_mut(rk.0) {
            // The other nodes' copies count as one until the transport says how many
            // there are ([`Frame::Expect`]).
            let n = others.len() + usize::from(cascade);
            r.set_syncing(n, Instant::now() + SYNC_WAIT);
        }
        for to in others {
            self.link_send(rk, to, Frame::Fact(Fact::Hello));
        }
        if cascade {
            self.link_send(rk, ALL_REMOTE, Frame::Fact(Fact::Hello));
        }
    }

    /// A room closed here: its other copies forget this one.
    pub(super) fn close_copy(&mut self, rk: RoomKey) {
        if let Some((_, copies)) = self.copies.get(&rk) {
            for to in copies.clone().into_iter().filter(|to| *to < REMOTE) {
                self.link_send(rk, to, Frame::Gone);
            }
            // The transport forgets the room here even when no other node had it.
            if self.links_out.remote.is_some() {
                self.link_send(rk, ALL_REMOTE, Frame::Gone);
            }
        }
        self.copies.remove(&rk);
    }

    /// One message from another worker's copy of a room.
    pub(super) fn on_link(&mut self, link: Link) {
        let now = Instant::now();
        let Some(rk) = self.room_key(&link.room) else {
            // No copy here (it emptied): nothing to do.
            return;
        };
        let from = link.from;
        // A copy we did not know of: it was opened while this one was (its hello may have
        // found no room here yet). Both sides exchange what they know.
        let entry = self
            .copies
            .entry(rk)
            .or_insert_with(|| (link.room.clone(), Vec::new()));
        let control = matches!(link.frame, Frame::Gone | Frame::Expect(_) | Frame::Resync);
        if !control && !entry.1.contains(&from) {
            entry.1.push(from);
            if let Some(r) = self.rooms.get_mut(rk.0) {
                r.set_copied();
            }
            if !matches!(link.frame, Frame::Fact(Fact::Hello)) {
                self.link_send(rk, from, Frame::Fact(Fact::Hello));
                let snapshot = self
                    .rooms
                    .get(rk.0)
                    .map(|r| r.snapshot())
                    .unwrap_or_default();
                for f in snapshot {
                    self.link_send(rk, from, Frame::Fact(f));
                }
            }
        }
        match link.frame {
            Frame::Media { track, packet, at } => {
                // Counted in `rtp_in` where it was received, in `relayed_packets` where
                // it was sent here.
                let Some(key) = self.rooms.get(rk.0).and_then(|r| r.track_key(&track)) else {
                    return;
                };
                self.timing
                    .relay_hop
                    .record(now.saturating_duration_since(at).as_micros() as u64);
                self.rx_at = Some(self.rx_at.map_or(at, |rx| rx.min(at)));
                self.forward(rk, key, packet, now);
            }
            Frame::Fact(fact) => {
                let replies = self
                    .with_room(rk, |r| r.fact(now, RelayKey(from as u32), fact))
                    .unwrap_or_default();
                for f in replies {
                    self.link_send(rk, from, Frame::Fact(f));
                }
            }
            Frame::Upstream(Upstream::Wants { track, layers }) => {
                self.with_room(rk, |r| {
                    r.relay_wants(now, &track, RelayKey(from as u32), layers)
                });
            }
            Frame::Upstream(Upstream::Keyframe { track, layer }) => {
                self.with_room(rk, |r| r.relay_keyframe(now, &track, layer));
            }
            Frame::Expect(n) => {
                self.with_room(rk, |r| r.expect_copies(n));
            }
            Frame::Resync => {
                self.link_send(rk, ALL_REMOTE, Frame::Fact(Fact::Hello));
            }
            Frame::Gone => {
                if let Some((_, copies)) = self.copies.get_mut(&rk) {
                    copies.retain(|w| *w != from);
                }
                self.with_room(rk, |r| r.copy_gone(RelayKey(from as u32)));
            }
        }
    }
}
