//! Failure isolation: a panic while handling one room's traffic, timers, output or
//! commands closes that room, not the worker (and so not the other rooms it hosts).
//!
//! Every entry into room-scoped work (a command, a datagram, a timer, a peer's events, a
//! flush, a room's tick, a removal) runs under `catch_unwind`. After a panic the room's
//! state cannot be trusted, so it is not called again: the worker tells its participants
//! (a fatal `internal`; their clients rejoin, into a fresh room), closes their connections
//! and drops the room. A panic that escapes even this (in the loop itself) unwinds the
//! worker; the thread then starts a fresh one (see [`crate::Sfu`]).

use super::{Command, Worker};
use crate::keys::{ParticipantKey, PeerKey, RoomKey};
use crate::room::Removal;
use crate::stats::SfuStats;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Whose work a guarded call is: resolved to a room only after a panic, so that the
/// per-packet paths (datagrams, peer events) pay nothing for it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scope {
    /// A datagram from this address (the peer it routes to).
    From(SocketAddr),
    Peer(PeerKey),
    Room(RoomKey),
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

impl Worker {
    /// Runs `f`; if it panics, the room of `scope` (when it can be told) is closed.
    pub(super) fn isolated(&mut self, scope: Scope, what: &'static str, f: impl FnOnce(&mut Self)) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(self))) {
            let room = match scope {
                Scope::From(addr) => self
                    .by_addr
                    .get(&addr)
                    .and_then(|k| self.peers.get(k))
                    .map(|p| p.room),
                Scope::Peer(key) => self.peers.get(&key).map(|p| p.room),
                Scope::Room(rk) => Some(rk),
            };
            self.fail_room(room, what, panic_message(p.as_ref()));
        }
    }

    /// Runs a command; if it panics, the room it concerns is closed. (Known before it
    /// runs: a command may remove the participant it names.)
    pub(super) fn isolated_command(&mut self, c: Command) {
        #[cfg(feature = "fault-injection")]
        if let Command::InjectPanic {
            point: crate::FaultPoint::Worker,
            ..
        } = &c
        {
            // Not isolated, on purpose: the test of the worker's own supervision.
            self.command(c);
            return;
        }
        let room = self.room_of_command(&c);
        let joining = match &c {
            Command::Join { key, .. } => Some(*key),
            _ => None,
        };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| self.command(c))) {
            // A join that panicked may have left its session behind without a room.
            let room = room.or_else(|| joining.and_then(|k| self.room_of(k)));
            self.fail_room(room, "a command", panic_message(p.as_ref()));
        }
    }

    /// Handles one message from another worker's copy of a room; if it panics, this
    /// worker's copy of that room is closed.
    pub(super) fn isolated_link(&mut self, l: super::relay::Link) {
        let room = self.room_key(&l.room);
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| self.on_link(l))) {
            self.fail_room(room, "a relay link", panic_message(p.as_ref()));
        }
    }

    /// The room a command concerns, if any.
    fn room_of_command(&self, c: &Command) -> Option<RoomKey> {
        match c {
            Command::Join { room, .. }
            | Command::AddTap { room, .. }
            | Command::RemoveTap { room, .. }
            | Command::TapKeyframe { room, .. }
            | Command::Kick { room, .. }
            | Command::MuteTrack { room, .. }
            | Command::CloseRoom { room, .. } => self.room_key(room),
            Command::Client { key, .. }
            | Command::Leave { key }
            | Command::Detach { key }
            | Command::Resync { key } => self.room_of(*key),
            #[cfg(feature = "fault-injection")]
            Command::InjectPanic { room, .. } => self.room_key(room),
            _ => None,
        }
    }

    /// Closes a room whose handling panicked, without calling into it again.
    fn fail_room(&mut self, room: Option<RoomKey>, what: &'static str, msg: &str) {
        let Some(rk) = room else {
            tracing::error!(
                during = what,
                panic = msg,
                "internal error outside any room; the worker goes on"
            );
            return;
        };
        let name = self
            .rooms
            .get(rk.0)
            .map(|r| r.id.to_string())
            .unwrap_or_default();
        tracing::error!(room = %name, during = what, panic = msg, "internal error: closing the room");
        SfuStats::inc(&self.stats.rooms_failed);
        let members: Vec<ParticipantKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.room == rk)
            .map(|(k, _)| *k)
            .collect();
        let notice = Removal::RoomFailed.notice();
        for k in &members {
            if let Some(s) = self.sessions.remove(k) {
                if let Some(n) = &notice {
                    let _ = s.events.try_send(n.clone());
                }
                SfuStats::gauge(&self.stats.participants, -1);
                self.drop_peer(s.sub);
                if let Some(p) = s.publ {
                    self.drop_peer(p);
                }
            }
        }
        if self.rooms.contains(rk.0) {
            // Its other copies forget this one (and the participants it had).
            self.close_copy(rk);
            let mut r = self.rooms.remove(rk.0);
            self.room_keys.remove(&r.id);
            let (tracks, downs, _) = r.counts();
            SfuStats::gauge(&self.stats.published_tracks, -(tracks as i64));
            SfuStats::gauge(&self.stats.down_tracks, -(downs as i64));
            r.drop_taps();
            SfuStats::gauge(&self.stats.rooms, -1);
            self.emit(crate::events::RoomEvent::RoomFinished { room: r.id });
        }
    }

    /// Forgets a peer connection even if closing it panics.
    fn drop_peer(&mut self, key: PeerKey) {
        if catch_unwind(AssertUnwindSafe(|| self.remove_peer(key))).is_ok() {
            return;
        }
        if self.peers.remove(&key).is_some() {
            SfuStats::gauge(&self.stats.peer_connections, -1);
        }
        self.by_ufrag.retain(|_, v| *v != key);
        self.by_addr.retain(|_, v| *v != key);
        self.timers.retain(|(_, k)| *k != key);
    }

    /// Removes a participant; if the removal itself panics (the room's state is broken),
    /// its whole room is closed.
    pub(super) fn remove_isolated(&mut self, key: ParticipantKey, why: Removal) {
        let room = self.room_of(key);
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| self.remove_participant(key, why))) {
            self.fail_room(room, "a removal", panic_message(p.as_ref()));
        }
    }
}
