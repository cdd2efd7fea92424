//! Translation between the rooms and the IO: commands from signaling and peer events
//! become room inputs; room outputs become peer operations and session messages.

use super::{Command, RoomSummary, Session, Worker, unix_ms};
use crate::error::{JoinError, PeerError};
use crate::keys::{ParticipantKey, PeerKey, RoomKey};
use crate::peer::{ChatSend, Opened, PeerEvent, Role, Written};
use crate::room::{
    Dest, Feedback, JoinInfo, JoinRefusal, OfferResult, Output, Removal, Room, TrackOpen,
};
use crate::stats::SfuStats;
use confab_proto::{ErrorCode, RoomId, ServerMessage};
use std::time::Instant;

/// A subscriber's data channel may hold this much unsent chat before messages to it are
/// dropped (a stalled reader must not grow the server's memory).
const CHAT_MAX_OUTSTANDING: usize = 256 * 1024;

impl Worker {
    pub(super) fn room_key(&self, room: &RoomId) -> Option<RoomKey> {
        self.room_keys.get(room).copied()
    }

    pub(super) fn room_of(&self, key: ParticipantKey) -> Option<RoomKey> {
        self.sessions.get(&key).map(|s| s.room)
    }

    /// Runs `f` on a room, then applies what it asked for.
    pub(super) fn with_room<R>(
        &mut self,
        rk: RoomKey,
        f: impl FnOnce(&mut Room) -> R,
    ) -> Option<R> {
        let r = f(self.rooms.get_mut(rk.0)?);
        self.apply_outputs(rk);
        Some(r)
    }

    pub(super) fn command(&mut self, c: Command) {
        let now = Instant::now();
        match c {
            Command::Join {
                key,
                id,
                room,
                name,
                opts,
                events,
                copies,
                reply,
            } => {
                let r = self.join(key, id, room, name, opts, events, copies, now);
                let _ = reply.send(r);
            }
            Command::Client { key, request, msg } => {
                if let Some(rk) = self.room_of(key) {
                    self.with_room(rk, |r| r.client(now, key, request, msg));
                }
            }
            Command::Leave { key } => self.remove_participant(key, Removal::Left),
            Command::Shutdown => self.stop(),
            #[cfg(feature = "fault-injection")]
            Command::InjectPanic { room, point } => {
                let rk = self.room_key(&room);
                match (point, rk) {
                    (crate::FaultPoint::Command, _) => panic!("injected fault in room {room}"),
                    (crate::FaultPoint::Worker, _) => {
                        // Beyond every room's isolation: the whole worker unwinds.
                        panic!("injected worker fault")
                    }
                    (p, Some(rk)) => self.fault = Some((rk, p)),
                    (_, None) => {}
                }
            }
            Command::Detach { key } => {
                if let Some(rk) = self.room_of(key) {
                    self.with_room(rk, |r| r.detach(key));
                }
            }
            Command::Resync { key } => {
                if let Some(rk) = self.room_of(key) {
                    self.with_room(rk, |r| r.resync(key));
                }
            }
            Command::Notice { message } => {
                let keys: Vec<RoomKey> = self.rooms.iter().map(|(k, _)| RoomKey(k)).collect();
                for rk in keys {
                    self.with_room(rk, |r| r.notice(&message));
                }
            }
            Command::AddTap { room, tap, reply } => {
                let found = self
                    .room_key(&room)
                    .and_then(|rk| self.with_room(rk, |r| r.add_tap(tap, now)))
                    .is_some();
                let _ = reply.send(found);
            }
            Command::RemoveTap { room, tap } => {
                if let Some(rk) = self.room_key(&room) {
                    self.with_room(rk, |r| r.remove_tap(tap));
                }
            }
            Command::TapKeyframe { room, track } => {
                if let Some(rk) = self.room_key(&room) {
                    self.with_room(rk, |r| r.tap_keyframe(&track, now));
                }
            }
            Command::Inspect { reply } => {
                let rooms = self
                    .rooms
                    .iter()
                    .map(|(_, r)| RoomSummary {
                        room: r.id.clone(),
                        participants: r.summary(),
                        recording: r.recording(),
                        worker: self.index,
                        relays: r.relays(Instant::now()),
                        elsewhere: r
                            .remotes()
                            .filter(|(_, m)| m.home.0 as usize >= super::relay::REMOTE)
                            .filter_map(|(k, m)| {
                                Some(super::Elsewhere {
                                    participant: r.remote_info(*k)?,
                                    node: None,
                                    worker: None,
                                    copy: m.home.0 as usize,
                                })
                            })
                            .collect(),
                    })
                    .collect();
                let _ = reply.send(rooms);
            }
            Command::Kick {
                room,
                participant,
                reply,
            } => {
                let found = self
                    .room_key(&room)
                    .and_then(|rk| self.with_room(rk, |r| r.kick(&participant)))
                    .flatten();
                let _ = reply.send(found);
            }
            Command::RevokeToken { jti, reply } => {
                let keys: Vec<RoomKey> = self.rooms.iter().map(|(k, _)| RoomKey(k)).collect();
                let mut n = 0;
                for rk in keys {
                    n += self.with_room(rk, |r| r.revoke(&jti)).unwrap_or(0);
                }
                let _ = reply.send(n);
            }
            Command::MuteTrack {
                room,
                track,
                muted,
                reply,
            } => {
                let found = self
                    .room_key(&room)
                    .and_then(|rk| self.with_room(rk, |r| r.admin_mute(&track, muted, now)))
                    .unwrap_or(false);
                let _ = reply.send(found);
            }
            Command::CloseRoom { room, reply } => {
                let found = self
                    .room_key(&room)
                    .and_then(|rk| self.with_room(rk, |r| r.close(Removal::RoomClosed)))
                    .is_some();
                let _ = reply.send(found);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        key: ParticipantKey,
        id: confab_proto::ParticipantId,
        room_id: RoomId,
        name: confab_proto::DisplayName,
        opts: crate::JoinOptions,
        events: tokio::sync::mpsc::Sender<ServerMessage>,
        copies: Vec<usize>,
        now: Instant,
    ) -> Result<(), JoinError> {
        if self.stopping {
            return Err(JoinError::ShuttingDown);
        }
        let span = tracing::info_span!("participant", room = %room_id, participant = %id);
        let _g = span.enter();
        let max = self.config.max_participants_per_room;
        if self
            .room_key(&room_id)
            .and_then(|rk| self.rooms.get(rk.0))
            .is_some_and(|r| r.len() >= max)
        {
            return Err(JoinError::RoomFull {
                room: room_id.to_string(),
                max,
            });
        }
        let (rk, created) = match self.room_key(&room_id) {
            Some(rk) => (rk, false),
            None => {
                let room = Room::new(
                    room_id.clone(),
                    self.config.clone(),
                    self.stats.clone(),
                    self.index,
                );
                let rk = RoomKey(self.rooms.insert(room));
                self.room_keys.insert(room_id.clone(), rk);
                // Copies of the room on other workers: link to them before anyone joins
                // here, so that the join is told after the hello.
                self.open_copy(rk, &room_id, copies);
                (rk, true)
            }
        };
        let sub_peer = match self.factory.build(Role::Subscriber, key, rk) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot create subscriber connection");
                let _ = events.try_send(
                    ServerMessage::fatal(ErrorCode::Internal, e.to_string())
                        .reply_to(opts.request_id.clone()),
                );
                if created {
                    self.close_room(rk);
                }
                return Ok(());
            }
        };
        if created {
            SfuStats::gauge(&self.stats.rooms, 1);
            tracing::info!("room created");
            self.emit(crate::events::RoomEvent::RoomStarted {
                room: room_id.clone(),
            });
        }
        let sub = self.add_peer(sub_peer);
        self.sessions.insert(
            key,
            Session {
                room: rk,
                events,
                sub,
                publ: None,
            },
        );
        let info = JoinInfo {
            id,
            name,
            grants: opts.grants,
            identity: opts.identity.clone(),
            token_id: opts.token_id,
            resume_token: opts.resume_token,
            request_id: opts.request_id,
            sub_peer: sub,
            joined_at: unix_ms(),
        };
        match self.with_room(rk, |r| r.join(now, key, info)) {
            Some(Ok(())) => {
                tracing::info!(identity = opts.identity.as_deref().unwrap_or(""), "joined");
                Ok(())
            }
            Some(Err(JoinRefusal::Full { max })) => {
                self.sessions.remove(&key);
                self.remove_peer(sub);
                Err(JoinError::RoomFull {
                    room: room_id.to_string(),
                    max,
                })
            }
            None => Err(JoinError::ShuttingDown),
        }
    }

    /// Removes a participant from its room (the room's outputs close its connections).
    pub(super) fn remove_participant(&mut self, key: ParticipantKey, why: Removal) {
        let Some(rk) = self.room_of(key) else {
            return;
        };
        self.with_room(rk, |r| r.leave(key, why));
        // Not in the room (it failed to join it): forget it here.
        if let Some(s) = self.sessions.remove(&key) {
            self.remove_peer(s.sub);
            if let Some(p) = s.publ {
                self.remove_peer(p);
            }
        }
    }

    /// Applies everything a room asked for; closes it once empty.
    pub(super) fn apply_outputs(&mut self, rk: RoomKey) {
        while let Some(o) = self.rooms.get_mut(rk.0).and_then(Room::poll_output) {
            self.apply(rk, o);
        }
        if self.rooms.get(rk.0).is_some_and(Room::is_empty) {
            self.close_room(rk);
        }
    }

    fn close_room(&mut self, rk: RoomKey) {
        if !self.rooms.contains(rk.0) {
            return;
        }
        self.close_copy(rk);
        let mut room = self.rooms.remove(rk.0);
        self.room_keys.remove(&room.id);
        // Dropping the taps ends their sessions.
        room.drop_taps();
        SfuStats::gauge(&self.stats.rooms, -1);
        tracing::info!(room = %room.id, "room closed");
        self.emit(crate::events::RoomEvent::RoomFinished { room: room.id });
    }

    fn apply(&mut self, rk: RoomKey, o: Output) {
        let now = Instant::now();
        match o {
            Output::Signal { to, msg } => self.send_to(to, msg),
            Output::Chat { to, json } => {
                let Some(sub) = self.sessions.get(&to).map(|s| s.sub) else {
                    return;
                };
                let Some(peer) = self.peers.get_mut(&sub) else {
                    return;
                };
                match peer.send_chat(&json, now, CHAT_MAX_OUTSTANDING) {
                    ChatSend::Sent => self.mark_touched(sub),
                    // Not open yet: the history replay on open will deliver it.
                    ChatSend::NotOpen => {}
                    ChatSend::Dropped => SfuStats::inc(&self.stats.chat_dropped),
                }
            }
            Output::OpenDownTrack {
                subscriber,
                sub_peer,
                slot,
                track,
                owner,
                kind,
                codec,
            } => {
                let r = match self.peers.get_mut(&sub_peer) {
                    Some(p) => p.add_down_track(slot, &track, owner.as_str(), kind, &codec),
                    None => Err(PeerError::Rtc("no subscriber connection".into())),
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, track = %track, "cannot add down-track");
                    if let Some(room) = self.rooms.get_mut(rk.0) {
                        room.down_track_failed(subscriber, slot);
                    }
                }
            }
            Output::CloseDownTrack { sub_peer, slot } => {
                if let Some(p) = self.peers.get_mut(&sub_peer) {
                    p.remove_down_track(slot);
                }
            }
            Output::CreateOffer {
                subscriber,
                sub_peer,
                restart_ice,
            } => {
                let announce = self.announce;
                let result = match self.peers.get_mut(&sub_peer) {
                    Some(p) => p
                        .create_offer(announce, restart_ice)
                        .map(|sdp| (sdp, p.slot_mids()))
                        .map_err(|e| e.to_string()),
                    None => Err("no subscriber connection".into()),
                };
                self.reroute(sub_peer);
                self.mark_touched(sub_peer);
                if let Some(room) = self.rooms.get_mut(rk.0) {
                    room.offer_created(subscriber, result);
                }
            }
            Output::AnswerOffer {
                participant,
                request,
                sdp,
            } => self.answer_offer(rk, participant, request, sdp),
            Output::ApplyAnswer {
                participant,
                sub_peer,
                request,
                sdp,
            } => {
                let started = Instant::now();
                let Some(p) = self.peers.get_mut(&sub_peer) else {
                    return;
                };
                let result = p.apply_answer(sdp).map_err(|e| e.to_string());
                let negotiated = p.negotiated_slots();
                let connected = p.connected;
                self.mark_input(sub_peer);
                if let Some(room) = self.rooms.get_mut(rk.0) {
                    let applied = crate::room::Applied {
                        result,
                        cost: started.elapsed(),
                        negotiated,
                        connected,
                    };
                    room.answer_applied(now, participant, request, applied);
                }
            }
            Output::AddCandidate {
                participant,
                peer,
                request,
                candidate,
            } => {
                let r = self
                    .peers
                    .get_mut(&peer)
                    .map(|p| p.add_remote_candidate(candidate));
                if let Some(Err(e)) = r
                    && let Some(room) = self.rooms.get_mut(rk.0)
                {
                    room.refuse(
                        participant,
                        request,
                        ErrorCode::InvalidMessage,
                        e.to_string(),
                    );
                }
            }
            Output::RequestKeyframe {
                pub_peer,
                rtc_id,
                ssrc,
            } => {
                if let Some(p) = self.peers.get_mut(&pub_peer) {
                    p.send_pli(&rtc_id, ssrc, now);
                    self.mark_touched(pub_peer);
                }
            }
            Output::Relay { to, msg } => {
                self.link_send(rk, to.0 as usize, super::relay::Frame::Upstream(msg));
            }
            Output::Fact(fact) => self.tell_copies(rk, fact),
            Output::Event(ev) => self.emit(ev),
            Output::Removed {
                participant,
                sub_peer,
                pub_peer,
            } => {
                self.remove_peer(sub_peer);
                if let Some(p) = pub_peer {
                    self.remove_peer(p);
                }
                // Dropping the session's sender tells it (after its last message).
                if let Some(p) = self.sessions.remove(&participant).and_then(|s| s.publ) {
                    self.remove_peer(p);
                }
            }
        }
    }

    /// Applies a publisher's offer on its publisher connection (created on first use)
    /// and gives the room the result and what it cost.
    fn answer_offer(
        &mut self,
        rk: RoomKey,
        key: ParticipantKey,
        request: Option<confab_proto::RequestId>,
        sdp: String,
    ) {
        let started = Instant::now();
        let Some(s) = self.sessions.get(&key) else {
            return;
        };
        let (publ, created) = match s.publ {
            Some(k) => (k, false),
            None => match self.factory.build(Role::Publisher, key, rk) {
                Ok(peer) => {
                    let k = self.add_peer(peer);
                    if let Some(s) = self.sessions.get_mut(&key) {
                        s.publ = Some(k);
                    }
                    (k, true)
                }
                Err(e) => {
                    let result = OfferResult::Refused {
                        code: ErrorCode::Internal,
                        message: e.to_string(),
                    };
                    if let Some(room) = self.rooms.get_mut(rk.0) {
                        room.offer_answered(key, request, None, result, started.elapsed());
                    }
                    return;
                }
            },
        };
        let announce = self.announce;
        let Some(peer) = self.peers.get_mut(&publ) else {
            return;
        };
        let (result, rids) = match peer.answer_offer(sdp, announce) {
            Ok((answer, rids)) => (
                OfferResult::Answered {
                    sdp: answer,
                    mids: peer.mids(),
                },
                Some(rids),
            ),
            Err(e) => {
                let code = match e {
                    PeerError::Sdp(_) => ErrorCode::InvalidSdp,
                    _ => ErrorCode::Internal,
                };
                (
                    OfferResult::Refused {
                        code,
                        message: e.to_string(),
                    },
                    None,
                )
            }
        };
        let accepted = rids.is_some();
        if accepted {
            self.reroute(publ);
            self.mark_input(publ);
        } else if created {
            // A fresh connection that never got a valid offer is worth nothing.
            self.remove_peer(publ);
            if let Some(s) = self.sessions.get_mut(&key) {
                s.publ = None;
            }
        }
        let Some(room) = self.rooms.get_mut(rk.0) else {
            return;
        };
        if let Some(rids) = rids {
            room.publisher_rids(key, rids);
        }
        let publ = self.sessions.get(&key).and_then(|s| s.publ);
        room.offer_answered(key, request, publ, result, started.elapsed());
    }

    /// Forwards one RTP packet of a room's track (a publisher's, or one relayed here from
    /// another copy): copies to subscribers go to their egress streams, copies to other
    /// copies of the room to their links.
    pub(super) fn forward(
        &mut self,
        rk: RoomKey,
        track: crate::keys::TrackKey,
        pkt: rtc::rtp::Packet,
        now: Instant,
    ) {
        let Some(room) = self.rooms.get_mut(rk.0) else {
            return;
        };
        let peers = &mut self.peers;
        let send = &mut self.send;
        let scratch = &mut self.scratch;
        let links = &self.links_out;
        let index = self.index;
        let stats = &self.stats;
        let copy_of = self.copies.get(&rk).map(|(r, _)| r.clone());
        let at = self.rx_at.unwrap_or(now);
        let paced = &mut self.paced;
        let written = room.forward(now, track, pkt, |dest, out, patch| match dest {
            Dest::Down { sub_peer, slot } => {
                let Some(sub) = peers.get_mut(&sub_peer) else {
                    return false;
                };
                match sub.write_rtp(slot, out, patch, now, scratch) {
                    Written::Now(datagram, to, ssrc) => {
                        send.push_stream(datagram, to, ssrc);
                        true
                    }
                    Written::Queued => {
                        paced.push(sub_peer);
                        true
                    }
                    Written::Dropped => false,
                }
            }
            Dest::Relay { to, track } => copy_of.as_ref().is_some_and(|room| {
                super::relay::send_media(links, index, stats, room, to, track, out, at)
            }),
        });
        // A subscriber whose pacer started holding packets has a new timer.
        for key in std::mem::take(&mut self.paced) {
            self.mark_touched(key);
        }
        if written > 0 {
            self.forwarded += 1;
            if self.send.len() >= super::FLUSH_AT {
                self.send_now();
            }
        }
    }

    /// Drains one peer's events into its room.
    pub(super) fn drain_peer(&mut self, key: PeerKey) {
        let now = Instant::now();
        let Some(peer) = self.peers.get(&key) else {
            return;
        };
        let (rk, owner, role) = (peer.room, peer.participant, peer.role);
        loop {
            let Some(ev) = self.peers.get_mut(&key).and_then(|p| p.poll_event(now)) else {
                break;
            };
            self.peer_event(rk, key, owner, role, ev, now);
        }
        self.apply_outputs(rk);
    }

    fn peer_event(
        &mut self,
        rk: RoomKey,
        key: PeerKey,
        owner: ParticipantKey,
        role: Role,
        ev: PeerEvent,
        now: Instant,
    ) {
        match ev {
            PeerEvent::Rtp(track, pkt) => {
                SfuStats::inc(&self.stats.rtp_in);
                self.forward(rk, track, pkt, now);
            }
            PeerEvent::Red(d) => {
                SfuStats::add(&self.stats.red_restored, d.restored as u64);
                // Counted each time, logged the first time on this worker: a publisher
                // sending garbage must not flood the log.
                if d.malformed
                    && self
                        .stats
                        .red_malformed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        == 0
                {
                    tracing::warn!(participant = ?owner, "RED packet whose headers do not describe it: dropped (later ones are only counted, confab_red_malformed)");
                }
            }
            PeerEvent::IceConnected => self.mark_touched(key),
            PeerEvent::Connected => {
                if role == Role::Subscriber {
                    let negotiated = self
                        .peers
                        .get(&key)
                        .map(|p| p.negotiated_slots())
                        .unwrap_or_default();
                    if let Some(room) = self.rooms.get_mut(rk.0) {
                        room.subscriber_connected(now, owner, &negotiated);
                    }
                }
            }
            PeerEvent::Disconnected => {}
            PeerEvent::Failed => self.doomed.push((owner, Removal::MediaFailed)),
            PeerEvent::TrackOpened(Opened::Layer { track, rid, ssrc }) => {
                if let Some(room) = self.rooms.get_mut(rk.0) {
                    room.layer_opened(track, rid, ssrc);
                }
            }
            PeerEvent::TrackOpened(Opened::New {
                rtc_id,
                receiver,
                ssrc,
                rid,
                codec,
                kind,
                mid,
                audio_level_ext,
            }) => {
                let open = TrackOpen {
                    rtc_id: rtc_id.clone(),
                    pub_peer: key,
                    ssrc,
                    rid,
                    codec,
                    kind,
                    mid,
                    audio_level_ext,
                };
                let track = self
                    .rooms
                    .get_mut(rk.0)
                    .and_then(|r| r.track_opened(now, owner, open));
                if let (Some(track), Some(p)) = (track, self.peers.get_mut(&key)) {
                    p.track_accepted(rtc_id, receiver, ssrc, track);
                }
            }
            PeerEvent::TrackClosed(track) => {
                if let Some(room) = self.rooms.get_mut(rk.0) {
                    room.track_closed(owner, track);
                }
            }
            PeerEvent::ChatOpen => {
                if let Some(room) = self.rooms.get_mut(rk.0) {
                    room.chat_opened(owner);
                }
            }
            PeerEvent::Chat(data) => {
                if let Some(room) = self.rooms.get_mut(rk.0) {
                    room.chat(owner, &data, unix_ms());
                }
            }
            PeerEvent::SenderReport { ssrc, ntp, rtp_ts } => {
                if let Some(room) = self.rooms.get_mut(rk.0) {
                    room.sender_report(key, ssrc, ntp, rtp_ts);
                }
            }
            PeerEvent::TransportFeedback(signal) => {
                SfuStats::inc(&self.stats.twcc_feedback_in);
                let egress_bps = self.peers.get(&key).map_or(0, |p| p.egress.rate_bps(now));
                if let (Some(signal), Some(room)) = (signal, self.rooms.get_mut(rk.0)) {
                    room.transport_feedback(now, owner, signal, egress_bps);
                    self.pace_and_probe(rk, key, owner);
                }
            }
            PeerEvent::Feedback(track, sum) => {
                SfuStats::add(&self.stats.nacks_in, sum.nacks as u64);
                SfuStats::add(&self.stats.retransmissions, sum.retransmitted as u64);
                if let Some(rtt) = sum.rtt {
                    self.timing.rtt.record(rtt.as_micros() as u64);
                }
                let egress_bps = self.peers.get(&key).map_or(0, |p| p.egress.rate_bps(now));
                let fb = Feedback {
                    keyframe: sum.keyframe,
                    worst_loss: sum.worst_loss,
                    egress_bps,
                };
                if let Some(room) = self.rooms.get_mut(rk.0) {
                    room.feedback(now, owner, &track, fb);
                    self.pace_and_probe(rk, key, owner);
                }
            }
        }
    }

    /// A subscriber's estimate or allocation may have moved: its connection's pacer
    /// follows ([`crate::room::Room::pacing_bps`]), and sends the probe cluster the
    /// estimate asked for, if any.
    fn pace_and_probe(&mut self, rk: RoomKey, sub: PeerKey, owner: ParticipantKey) {
        let Some(room) = self.rooms.get_mut(rk.0) else {
            return;
        };
        let (pacing, probe) = (room.pacing_bps(owner), room.take_probe(owner));
        let Some(peer) = self.peers.get_mut(&sub) else {
            return;
        };
        if let Some(bps) = pacing {
            peer.set_pacing_bps(bps);
        }
        if let Some(bps) = probe
            && peer.start_probe(bps, Instant::now())
        {
            SfuStats::inc(&self.stats.bwe_probes);
            self.mark_touched(sub);
        }
    }

    /// Periodic work of every room, each isolated.
    pub(super) fn tick(&mut self, now: Instant) {
        let keys: Vec<RoomKey> = self.rooms.iter().map(|(k, _)| RoomKey(k)).collect();
        for rk in keys {
            self.isolated(super::isolate::Scope::Room(rk), "a room's tick", |w| {
                w.with_room(rk, |r| r.tick(now));
            });
        }
        // Sender reports of every down-track that is due one.
        let wall = std::time::SystemTime::now();
        for (key, peer) in self.peers.iter_mut() {
            if peer.role == Role::Subscriber
                && peer.sender_reports(now, wall)
                && let std::collections::hash_map::Entry::Vacant(e) = self.touched_flag.entry(*key)
            {
                // Output only: no protocol timer moved.
                e.insert(false);
                self.touched.push(*key);
            }
        }
    }
}
