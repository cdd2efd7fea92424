//! Failure isolation: a panic while handling one room's traffic or commands closes that
//! room, not the worker (and so not the other rooms it hosts).
//!
//! Every entry into room-scoped work (a command, a datagram, a peer's events, a removal)
//! runs under `catch_unwind`. After a panic the room's state cannot be trusted: its
//! participants are removed with a fatal `internal` error (their clients may rejoin, into
//! a fresh room), and if even that panics they are dropped from the tables outright.

use super::{Command, Removal, Worker};
use crate::peer::{ParticipantKey, PeerKey};
use confab_proto::RoomId;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Whose work a guarded call is: resolved to a room only after a panic, so that the
/// per-packet paths (datagrams, peer events) pay nothing for it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scope {
    /// A datagram from this address (the peer it routes to).
    From(SocketAddr),
    Peer(PeerKey),
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
                    .copied()
                    .and_then(|k| self.room_of_peer(k)),
                Scope::Peer(key) => self.room_of_peer(key),
            };
            self.fail_room(room, what, panic_message(p.as_ref()));
        }
    }

    /// Runs a command; if it panics, the room it concerns is closed. (Known before it
    /// runs: a command may remove the participant it names.)
    pub(super) fn isolated_command(&mut self, c: Command) {
        let room = self.room_of_command(&c);
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| self.command(c))) {
            self.fail_room(room, "a command", panic_message(p.as_ref()));
        }
    }

    fn room_of_participant(&self, key: ParticipantKey) -> Option<RoomId> {
        self.participants.get(&key).map(|p| p.room.clone())
    }

    fn room_of_peer(&self, key: PeerKey) -> Option<RoomId> {
        let owner = self.peers.get(&key)?.participant;
        self.room_of_participant(owner)
    }

    /// The room a command concerns, if any.
    fn room_of_command(&self, c: &Command) -> Option<RoomId> {
        match c {
            Command::Join { room, .. }
            | Command::AddTap { room, .. }
            | Command::RemoveTap { room, .. }
            | Command::TapKeyframe { room, .. }
            | Command::Kick { room, .. }
            | Command::MuteTrack { room, .. } => Some(room.clone()),
            Command::Client { key, .. }
            | Command::Leave { key }
            | Command::Detach { key }
            | Command::Resync { key } => self.room_of_participant(*key),
            #[cfg(feature = "fault-injection")]
            Command::InjectPanic { room } => Some(room.clone()),
            _ => None,
        }
    }

    fn fail_room(&mut self, room: Option<RoomId>, what: &'static str, msg: &str) {
        let Some(room) = room else {
            tracing::error!(
                during = what,
                panic = msg,
                "internal error outside any room; the worker goes on"
            );
            return;
        };
        tracing::error!(room = %room, during = what, panic = msg, "internal error: closing the room");
        let members: Vec<ParticipantKey> = self
            .participants
            .iter()
            .filter(|(_, p)| p.room == room)
            .map(|(k, _)| *k)
            .collect();
        for k in members {
            self.doomed.push((k, Removal::RoomFailed));
        }
        crate::stats::SfuStats::inc(&self.stats.rooms_failed);
    }

    /// Removes a participant; if the removal itself panics (the room's state is broken),
    /// forgets it and its peers without further ceremony.
    pub(super) fn remove_isolated(&mut self, key: ParticipantKey, why: Removal) {
        if catch_unwind(AssertUnwindSafe(|| self.remove_participant(key, why))).is_ok() {
            return;
        }
        tracing::error!("removing a participant failed; dropping it outright");
        if let Some(p) = self.participants.remove(&key) {
            if let Some(notice) = why.notice() {
                let _ = p.events.try_send(notice);
            }
            crate::stats::SfuStats::gauge(&self.stats.participants, -1);
            if let Some(room) = self.rooms.get_mut(&p.room) {
                room.members.retain(|m| *m != key);
                if room.members.is_empty() {
                    self.rooms.remove(&p.room);
                    crate::stats::SfuStats::gauge(&self.stats.rooms, -1);
                }
            }
        }
        let peers: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| p.participant == key)
            .map(|(k, _)| *k)
            .collect();
        for k in peers {
            if let Some(mut peer) = self.peers.remove(&k) {
                peer.close();
                crate::stats::SfuStats::gauge(&self.stats.peer_connections, -1);
            }
            self.by_ufrag.retain(|_, v| *v != k);
            self.by_addr.retain(|_, v| *v != k);
        }
    }
}
