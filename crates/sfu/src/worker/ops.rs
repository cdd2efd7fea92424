//! What the worker does with commands, peer events and media: joins and leaves,
//! negotiation, publication, forwarding, keyframe requests and chat.

use super::{Command, Participant, Removal, SubState, Worker, unix_ms};
use crate::budget::Admit;
use crate::error::{JoinError, PeerError};
use crate::peer::{ChatSend, ParticipantKey, PeerKey, Role};
use crate::room::{PublishedTrack, Room};
use crate::stats::SfuStats;
use confab_proto::signal::PublishTrack;
use confab_proto::{
    ChatOut, ClientConfig, ClientMessage, ErrorCode, PROTOCOL_VERSION, ParticipantInfo, PcTarget,
    RequestId, RoomId, ServerMessage, SubscribedTrack, TrackId, TrackSource,
};
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::sansio::Protocol;
use std::collections::HashMap;
use std::time::Instant;

/// A subscriber's data channel may hold this much unsent chat before messages to it are
/// dropped (a stalled reader must not grow the server's memory).
const CHAT_MAX_OUTSTANDING: usize = 256 * 1024;

impl Worker {
    pub(super) fn command(&mut self, c: Command) {
        match c {
            Command::Join {
                key,
                id,
                room,
                name,
                opts,
                events,
                reply,
            } => {
                let r = self.join(key, id, room, name, opts, events);
                let _ = reply.send(r);
            }
            Command::Client { key, request, msg } => self.client(key, request, msg),
            Command::Leave { key } => self.remove_participant(key, Removal::Left),
            Command::Shutdown => self.stop(),
            #[cfg(feature = "fault-injection")]
            Command::InjectPanic { room } => panic!("injected fault in room {room}"),
            Command::Detach { key } => {
                if let Some(p) = self.participants.get_mut(&key) {
                    p.attached = false;
                }
            }
            Command::Resync { key } => {
                if let Some(joined) = self.joined_message(key) {
                    self.send_to(key, joined);
                }
                let Some(p) = self.participants.get_mut(&key) else {
                    return;
                };
                p.attached = true;
                let resend = match &p.pending_offer {
                    Some((offer, true)) if p.sub_state == SubState::AwaitingAnswer => {
                        Some(offer.clone())
                    }
                    _ => None,
                };
                if let Some(offer) = resend {
                    self.send_to(key, offer);
                }
            }
            Command::Notice { message } => {
                let keys: Vec<ParticipantKey> = self.participants.keys().copied().collect();
                for k in keys {
                    self.send_to(k, message.clone());
                }
            }
            Command::AddTap { room, tap, reply } => {
                let Some(r) = self.rooms.get_mut(&room) else {
                    let _ = reply.send(false);
                    return;
                };
                // Tracks already published start now.
                let metas: Vec<_> = r
                    .tracks
                    .values()
                    .filter_map(|t| {
                        let p = self.participants.get(&t.owner)?;
                        Some(t.meta(&room, &p.id, &p.name))
                    })
                    .collect();
                for m in metas {
                    tap.send(crate::sink::TapEvent::TrackStarted(m));
                }
                r.taps.push(tap);
                SfuStats::gauge(&self.stats.recordings, 1);
                let _ = reply.send(true);
                // Video starts on a keyframe.
                let tracks: Vec<TrackId> = r.tracks.keys().cloned().collect();
                let now = Instant::now();
                for t in tracks {
                    self.request_keyframe(&room, &t, 2, now);
                }
            }
            Command::RemoveTap { room, tap } => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    let before = r.taps.len();
                    r.taps.retain(|t| t.id != tap);
                    if r.taps.len() < before {
                        SfuStats::gauge(&self.stats.recordings, -1);
                    }
                }
            }
            Command::TapKeyframe { room, track } => {
                self.request_keyframe(&room, &track, 2, Instant::now());
            }
            Command::Inspect { reply } => {
                let rooms = self
                    .rooms
                    .values()
                    .map(|r| super::RoomSummary {
                        room: r.id.clone(),
                        participants: r
                            .members
                            .iter()
                            .filter_map(|k| self.participant_info(*k))
                            .collect(),
                        recording: !r.taps.is_empty(),
                        worker: self.index,
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
                    .participants
                    .iter()
                    .find(|(_, p)| p.room == room && p.id == participant)
                    .map(|(k, p)| (*k, p.identity.clone()));
                if let Some((k, _)) = found {
                    self.remove_participant(k, Removal::Kicked);
                }
                let _ = reply.send(found.map(|(_, identity)| identity));
            }
            Command::RevokeToken { jti, reply } => {
                let keys: Vec<ParticipantKey> = self
                    .participants
                    .iter()
                    .filter(|(_, p)| p.token_id.as_deref() == Some(jti.as_str()))
                    .map(|(k, _)| *k)
                    .collect();
                for k in &keys {
                    self.remove_participant(*k, Removal::Revoked);
                }
                let _ = reply.send(keys.len());
            }
            Command::MuteTrack {
                room,
                track,
                muted,
                reply,
            } => {
                let _ = reply.send(self.admin_mute(&room, &track, muted));
            }
            Command::CloseRoom { room, reply } => {
                let members: Vec<ParticipantKey> = self
                    .rooms
                    .get(&room)
                    .map(|r| r.members.clone())
                    .unwrap_or_default();
                let found = self.rooms.contains_key(&room);
                for k in members {
                    self.remove_participant(k, Removal::RoomClosed);
                }
                let _ = reply.send(found);
            }
        }
    }

    /// A participant's message, checked against its grants and budget; refusals name
    /// `request`.
    fn client(&mut self, key: ParticipantKey, request: Option<RequestId>, msg: ClientMessage) {
        match msg {
            ClientMessage::Publish { sdp, tracks } => {
                self.publish_checked(key, request, sdp, tracks)
            }
            ClientMessage::Answer { sdp } => self.answer(key, request, sdp),
            ClientMessage::Candidate { target, candidate } => {
                let Some(p) = self.participants.get(&key) else {
                    return;
                };
                let peer = match target {
                    PcTarget::Subscriber => Some(p.sub),
                    PcTarget::Publisher => p.publ,
                };
                let Some(pk) = peer else {
                    self.refuse(
                        key,
                        request,
                        ErrorCode::OutOfOrder,
                        "a publisher candidate arrived before any publish offer",
                    );
                    return;
                };
                if let Some(peer) = self.peers.get_mut(&pk)
                    && let Err(e) = peer.add_remote_candidate(candidate)
                {
                    self.refuse(key, request, ErrorCode::InvalidMessage, e.to_string());
                }
            }
            ClientMessage::Mute { source, muted } => self.mute(key, source, muted),
            ClientMessage::Subscription {
                track_id,
                subscribed,
                quality,
                height,
                ..
            } => self.subscription(key, request, track_id, subscribed, quality, height),
            ClientMessage::Pin { participant_ids } => {
                if let Some(p) = self.participants.get_mut(&key) {
                    p.pins = participant_ids;
                    self.allocate(key, Instant::now());
                }
            }
            ClientMessage::Leave => self.remove_participant(key, Removal::Left),
            // Signaling answers a second join itself.
            ClientMessage::Join { .. } => {}
        }
    }

    /// Tells a participant its request was refused.
    pub(super) fn refuse(
        &mut self,
        key: ParticipantKey,
        request: Option<RequestId>,
        code: ErrorCode,
        message: impl Into<String>,
    ) {
        self.send_to(key, ServerMessage::error(code, message).reply_to(request));
    }

    fn publish_checked(
        &mut self,
        key: ParticipantKey,
        request: Option<RequestId>,
        sdp: String,
        tracks: Vec<PublishTrack>,
    ) {
        let allowed = self
            .participants
            .get(&key)
            .is_some_and(|p| p.grants.can_publish && !p.grants.hidden);
        if !allowed {
            self.refuse(
                key,
                request,
                ErrorCode::Forbidden,
                "your access token does not allow publishing",
            );
            return;
        }
        let sending = crate::sdp::sending_media_sections(&sdp);
        let max = self.config.max_tracks_per_participant;
        if sending > max {
            self.refuse(
                key,
                request,
                ErrorCode::LimitReached,
                format!("this offer sends {sending} tracks; at most {max} are allowed"),
            );
            return;
        }
        if !self.admit_signaling(key, &request, "your offers are using more of the server's time than allowed: publish refused, try again in a moment") {
            return;
        }
        let started = Instant::now();
        self.publish(key, request, sdp, tracks);
        let cost = started.elapsed();
        if let Some(p) = self.participants.get_mut(&key) {
            p.budget.charge(cost);
        }
    }

    /// Whether the participant's signaling budget admits more media-thread work now;
    /// refuses (naming `request`) or removes it when not.
    fn admit_signaling(
        &mut self,
        key: ParticipantKey,
        request: &Option<RequestId>,
        refusal: &str,
    ) -> bool {
        let Some(p) = self.participants.get_mut(&key) else {
            return false;
        };
        match p.budget.admit(Instant::now()) {
            Admit::Yes => true,
            Admit::Refuse { strikes } => {
                SfuStats::inc(&self.stats.signaling_over_budget);
                if strikes == 1 {
                    tracing::info!(participant = %p.id, "refused: signaling budget spent");
                }
                self.refuse(key, request.clone(), ErrorCode::RateLimited, refusal);
                false
            }
            Admit::Remove => {
                SfuStats::inc(&self.stats.signaling_over_budget);
                tracing::info!(participant = %p.id, "removed: signaling budget exceeded too often");
                self.doomed.push((key, Removal::OverBudget));
                false
            }
        }
    }

    fn join(
        &mut self,
        key: ParticipantKey,
        id: confab_proto::ParticipantId,
        room_id: RoomId,
        name: confab_proto::DisplayName,
        opts: crate::JoinOptions,
        events: tokio::sync::mpsc::Sender<ServerMessage>,
    ) -> Result<(), JoinError> {
        if self.stopping {
            return Err(JoinError::ShuttingDown);
        }
        let max = self.config.max_participants_per_room;
        let members = self.rooms.get(&room_id).map_or(0, |r| r.members.len());
        if members >= max {
            return Err(JoinError::RoomFull {
                room: room_id.to_string(),
                max,
            });
        }
        // Told apart from whoever the room already shows under that name.
        let name = match self.rooms.get(&room_id) {
            Some(r) if self.config.unique_names && !opts.grants.hidden => {
                let shown = r.members.iter().filter(|k| self.visible(**k));
                let taken = shown.filter_map(|k| self.participants.get(k).map(|p| &p.name));
                crate::names::unique_name(name, taken)
            }
            _ => name,
        };
        let opts_identity = opts.identity.clone();
        let span = tracing::info_span!("participant", room = %room_id, participant = %id);
        let _g = span.enter();
        let sub_peer = match self.factory.build(Role::Subscriber, key) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot create subscriber connection");
                let _ = events.try_send(ServerMessage::fatal(ErrorCode::Internal, e.to_string()));
                return Ok(());
            }
        };
        let sub = self.add_peer(sub_peer);
        if !self.rooms.contains_key(&room_id) {
            self.rooms.insert(
                room_id.clone(),
                Room::new(room_id.clone(), self.config.chat_history),
            );
            SfuStats::gauge(&self.stats.rooms, 1);
            tracing::info!("room created");
            self.emit(crate::events::RoomEvent::RoomStarted {
                room: room_id.clone(),
            });
        }
        SfuStats::gauge(&self.stats.participants, 1);
        let now = Instant::now();
        self.participants.insert(
            key,
            Participant {
                id,
                name,
                grants: opts.grants,
                identity: opts.identity,
                token_id: opts.token_id,
                chat_limit: chat_limiter(self.config.chat_per_second),
                resume_token: opts.resume_token.clone(),
                attached: true,
                pending_offer: None,
                joined_at: unix_ms(),
                room: room_id.clone(),
                events,
                sub,
                publ: None,
                sources: HashMap::new(),
                tracks: Vec::new(),
                sub_state: SubState::Stable,
                needs_offer: true,
                negotiated: false,
                answer_failed: false,
                negotiate_by: now
                    + std::time::Duration::from_millis(self.config.negotiation_timeout_ms),
                budget: crate::budget::WorkBudget::new(
                    now,
                    std::time::Duration::from_millis(self.config.signaling_budget_ms_per_s),
                    std::time::Duration::from_millis(self.config.signaling_budget_burst_ms),
                    self.config.signaling_budget_strikes,
                ),
                prefs: HashMap::new(),
                pins: Vec::new(),
                bwe: crate::bwe::LossBwe::new(crate::bwe::BweConfig::default()),
                allocated_at: None,
            },
        );
        let room = self.rooms.get_mut(&room_id).expect("room just ensured");
        room.members.push(key);
        // Everything already published in the room becomes a down-track of the newcomer.
        let track_ids: Vec<TrackId> = room.tracks.keys().cloned().collect();
        for t in track_ids {
            self.subscribe(key, &room_id, &t);
        }
        let me = self
            .participant_info(key)
            .expect("participant just inserted");
        if let Some(joined) = self.joined_message(key) {
            self.send_to(key, joined.reply_to(opts.request_id.clone()));
        }
        if !opts.grants.hidden {
            self.broadcast(
                &room_id,
                Some(key),
                ServerMessage::ParticipantJoined { participant: me },
            );
        }
        tracing::info!(identity = opts_identity.as_deref().unwrap_or(""), "joined");
        if let Some(p) = self.participants.get(&key) {
            self.emit(crate::events::RoomEvent::ParticipantJoined {
                room: room_id.clone(),
                participant_id: p.id.clone(),
                name: p.name.to_string(),
                identity: p.identity.clone(),
            });
        }
        Ok(())
    }

    /// Whether the others see this participant (hidden ones are never announced).
    pub(super) fn visible(&self, key: ParticipantKey) -> bool {
        self.participants
            .get(&key)
            .is_some_and(|p| !p.grants.hidden)
    }

    pub(super) fn participant_info(&self, key: ParticipantKey) -> Option<ParticipantInfo> {
        let p = self.participants.get(&key)?;
        let room = self.rooms.get(&p.room)?;
        Some(ParticipantInfo {
            id: p.id.clone(),
            name: p.name.clone(),
            joined_at: p.joined_at,
            tracks: p
                .tracks
                .iter()
                .filter_map(|t| room.tracks.get(t).map(PublishedTrack::info))
                .collect(),
        })
    }

    /// Opens a down-track of `track` toward `subscriber` (not yet negotiated).
    pub(super) fn subscribe(
        &mut self,
        subscriber: ParticipantKey,
        room_id: &RoomId,
        track: &TrackId,
    ) {
        let Some(owner_key) = self
            .rooms
            .get(room_id)
            .and_then(|r| r.tracks.get(track))
            .map(|t| t.owner)
        else {
            return;
        };
        let Some(owner) = self.participants_id(owner_key) else {
            return;
        };
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return;
        };
        if !p.grants.can_subscribe {
            return;
        }
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let Some(t) = room.tracks.get_mut(track) else {
            return;
        };
        if t.owner == subscriber || t.down.iter().any(|d| d.subscriber == subscriber) {
            return;
        }
        let Some(peer) = self.peers.get_mut(&p.sub) else {
            return;
        };
        match peer.add_down_track(&t.id, owner.as_str(), t.kind, &t.codec) {
            Ok(slot) => {
                t.add_down(subscriber, p.sub, slot);
                p.needs_offer = true;
                SfuStats::gauge(&self.stats.down_tracks, 1);
            }
            Err(e) => tracing::warn!(error = %e, track = %t.id, "cannot add down-track"),
        }
    }

    fn participants_id(&self, key: ParticipantKey) -> Option<confab_proto::ParticipantId> {
        self.participants.get(&key).map(|p| p.id.clone())
    }

    fn publish(
        &mut self,
        key: ParticipantKey,
        request: Option<RequestId>,
        sdp: String,
        tracks: Vec<PublishTrack>,
    ) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let (publ, created) = match p.publ {
            Some(k) => (k, false),
            None => match self.factory.build(Role::Publisher, key) {
                Ok(peer) => {
                    let k = self.add_peer(peer);
                    if let Some(p) = self.participants.get_mut(&key) {
                        p.publ = Some(k);
                    }
                    (k, true)
                }
                Err(e) => {
                    self.refuse(key, request, ErrorCode::Internal, e.to_string());
                    return;
                }
            },
        };
        let announce = self.announce;
        let Some(peer) = self.peers.get_mut(&publ) else {
            return;
        };
        match peer.answer_offer(sdp, announce) {
            Ok(answer) => {
                // Only now, with the offer accepted, is anything of the message kept: the
                // sources of the mids the connection has (the sources of the others, and
                // those of sections the offer no longer has, dropped).
                let mut unknown = Vec::new();
                let mut sources = HashMap::with_capacity(tracks.len());
                for t in tracks {
                    if peer.has_mid(&t.mid) {
                        sources.insert(t.mid, t.source);
                    } else {
                        unknown.push(t.mid);
                    }
                }
                if let Some(p) = self.participants.get_mut(&key) {
                    let before = std::mem::take(&mut p.sources);
                    for (mid, source) in before {
                        if peer.has_mid(&mid) {
                            sources.entry(mid).or_insert(source);
                        }
                    }
                    p.sources = sources;
                }
                let unknown = (!unknown.is_empty()).then(|| format!("{unknown:?}"));
                self.mark_input(publ);
                self.send_to(
                    key,
                    ServerMessage::Answer {
                        sdp: answer,
                        request_id: request,
                    },
                );
                if let Some(list) = unknown {
                    self.send_to(
                        key,
                        ServerMessage::error(
                            ErrorCode::UnknownTrack,
                            format!("publish names mids {list} that the offer does not contain"),
                        ),
                    );
                }
            }
            Err(e) => {
                let code = match e {
                    PeerError::Sdp(_) => ErrorCode::InvalidSdp,
                    _ => ErrorCode::Internal,
                };
                tracing::debug!(error = %e, "publish offer refused");
                if created {
                    // A fresh connection that never got a valid offer is worth nothing.
                    self.remove_peer(publ);
                    if let Some(p) = self.participants.get_mut(&key) {
                        p.publ = None;
                    }
                }
                self.refuse(key, request, code, e.to_string());
            }
        }
    }

    fn answer(&mut self, key: ParticipantKey, request: Option<RequestId>, sdp: String) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if p.sub_state != SubState::AwaitingAnswer {
            self.refuse(
                key,
                request,
                ErrorCode::OutOfOrder,
                "an answer arrived but no offer is pending",
            );
            return;
        }
        // An answer has exactly the sections of the offer it answers: anything else is
        // refused before rtc parses it (an invalid answer leaves the offer pending, so a
        // client could otherwise make the media thread parse junk at its message rate).
        let offered = match &p.pending_offer {
            Some((ServerMessage::Offer { sdp, .. }, _)) => Some(crate::sdp::section_count(sdp)),
            _ => None,
        };
        let answered = crate::sdp::section_count(&sdp);
        if offered.is_some_and(|n| n != answered) {
            let n = offered.unwrap_or_default();
            self.refuse(
                key,
                request,
                ErrorCode::InvalidSdp,
                format!("the answer has {answered} media sections; the offer has {n}"),
            );
            return;
        }
        // Answers are charged to the participant's budget; only one that already sent
        // an invalid answer can be refused for it (an honest client never is).
        let now = Instant::now();
        let failed_before = p.answer_failed;
        if failed_before
            && !self.admit_signaling(
                key,
                &request,
                "your invalid answers are using more of the server's time than allowed",
            )
        {
            return;
        }
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let sub = p.sub;
        let Some(peer) = self.peers.get_mut(&sub) else {
            return;
        };
        let result = peer.apply_answer(sdp);
        if let Some(p) = self.participants.get_mut(&key) {
            p.budget.charge(now.elapsed());
            p.answer_failed = result.is_err();
        }
        match result {
            Ok(()) => {
                if let Some(p) = self.participants.get_mut(&key) {
                    p.sub_state = SubState::Stable;
                    p.negotiated = true;
                }
                self.mark_input(sub);
                self.activate_down_tracks(key, Instant::now());
            }
            Err(e) => {
                // The offer stays pending: the client may send a corrected answer.
                self.refuse(key, request, ErrorCode::InvalidSdp, e.to_string());
            }
        }
    }

    fn subscription(
        &mut self,
        key: ParticipantKey,
        request: Option<RequestId>,
        track: TrackId,
        subscribed: bool,
        quality: confab_proto::Quality,
        height: Option<u32>,
    ) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let known = self
            .rooms
            .get(&p.room)
            .and_then(|r| r.tracks.get(&track))
            .is_some_and(|t| t.owner != key);
        if !known {
            self.refuse(
                key,
                request,
                ErrorCode::UnknownTrack,
                format!("no remote track {track} in this room"),
            );
            return;
        }
        if let Some(p) = self.participants.get_mut(&key) {
            p.prefs.insert(
                track,
                super::media::Pref {
                    subscribed,
                    quality,
                    height,
                },
            );
        }
        self.allocate(key, Instant::now());
    }

    /// An administrator mutes a track: it is marked muted and nobody receives it until it
    /// is unmuted (the publisher cannot undo this by itself).
    fn admin_mute(&mut self, room_id: &RoomId, track: &TrackId, muted: bool) -> bool {
        let Some(t) = self
            .rooms
            .get_mut(room_id)
            .and_then(|r| r.tracks.get_mut(track))
        else {
            return false;
        };
        t.muted = muted;
        t.admin_muted = muted;
        let owner = t.owner;
        if muted {
            for d in t.down.iter_mut() {
                d.forwarder.set_active(false);
            }
        }
        let members: Vec<ParticipantKey> = self
            .rooms
            .get(room_id)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        let now = Instant::now();
        for m in members {
            self.allocate(m, now);
        }
        if let Some(info) = self.participant_info(owner) {
            self.broadcast(
                room_id,
                None,
                ServerMessage::ParticipantUpdated { participant: info },
            );
        }
        true
    }

    fn mute(&mut self, key: ParticipantKey, source: TrackSource, muted: bool) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let room_id = p.room.clone();
        let tracks = p.tracks.clone();
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        let mut changed = false;
        for t in tracks {
            if let Some(t) = room.tracks.get_mut(&t)
                && t.source == source
                && t.muted != muted
                && !t.admin_muted
            {
                t.muted = muted;
                changed = true;
            }
        }
        if changed && let Some(info) = self.participant_info(key) {
            self.broadcast(
                &room_id,
                None,
                ServerMessage::ParticipantUpdated { participant: info },
            );
        }
    }

    pub(super) fn remove_participant(&mut self, key: ParticipantKey, why: Removal) {
        let Some(p) = self.participants.remove(&key) else {
            return;
        };
        if let Some(notice) = why.notice() {
            let _ = p.events.try_send(notice);
        }
        let span = tracing::info_span!("participant", room = %p.room, participant = %p.id);
        let _g = span.enter();
        SfuStats::gauge(&self.stats.participants, -1);
        let mut unpublished = Vec::new();
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.members.retain(|k| *k != key);
            room.speakers.remove(&key);
            // Its own tracks go away, with every down-track they fed.
            for t in &p.tracks {
                if let Some(track) = room.tracks.remove(t) {
                    SfuStats::gauge(&self.stats.published_tracks, -1);
                    room.taps
                        .retain(|tap| tap.send(crate::sink::TapEvent::TrackEnded(t.clone())));
                    unpublished.push(t.clone());
                    for d in track.down {
                        SfuStats::gauge(&self.stats.down_tracks, -1);
                        if let Some(peer) = self.peers.get_mut(&d.sub_peer) {
                            peer.remove_down_track(d.slot);
                        }
                        if let Some(s) = self.participants.get_mut(&d.subscriber) {
                            s.needs_offer = true;
                        }
                    }
                }
            }
            // And its subscriptions to everyone else's.
            for t in room.tracks.values_mut() {
                if t.remove_down(key).is_some() {
                    SfuStats::gauge(&self.stats.down_tracks, -1);
                }
            }
        }
        self.remove_peer(p.sub);
        if let Some(k) = p.publ {
            self.remove_peer(k);
        }
        tracing::info!(reason = why.as_str(), "left");
        for t in unpublished {
            self.emit(crate::events::RoomEvent::TrackUnpublished {
                room: p.room.clone(),
                participant_id: p.id.clone(),
                track_id: t,
            });
        }
        self.emit(crate::events::RoomEvent::ParticipantLeft {
            room: p.room.clone(),
            participant_id: p.id.clone(),
            reason: why.as_str().to_string(),
        });
        let empty = self
            .rooms
            .get(&p.room)
            .is_some_and(|r| r.members.is_empty());
        if empty {
            // Dropping the room drops its taps: their sessions finish.
            if let Some(r) = self.rooms.remove(&p.room) {
                SfuStats::gauge(&self.stats.recordings, -(r.taps.len() as i64));
            }
            SfuStats::gauge(&self.stats.rooms, -1);
            tracing::info!("room closed");
            self.emit(crate::events::RoomEvent::RoomFinished {
                room: p.room.clone(),
            });
        } else if !p.grants.hidden {
            self.broadcast(
                &p.room,
                None,
                ServerMessage::ParticipantLeft {
                    participant_id: p.id.clone(),
                },
            );
        }
    }

    /// Drains one peer's events and messages.
    pub(super) fn drain(&mut self, key: PeerKey) {
        let now = Instant::now();
        loop {
            let Some(peer) = self.peers.get_mut(&key) else {
                return;
            };
            let Some(ev) = peer.pc.poll_event() else {
                break;
            };
            self.event(key, ev, now);
        }
        loop {
            let Some(peer) = self.peers.get_mut(&key) else {
                return;
            };
            let Some(TaggedRTCMessage { now: at, message }) = peer.pc.poll_read() else {
                break;
            };
            match message {
                RTCMessage::RtpPacket(track_id, pkt) => self.rtp(key, &track_id, pkt, at),
                RTCMessage::RtcpPacket(track_id, pkts) => self.rtcp(key, &track_id, &pkts, at),
                RTCMessage::DataChannelMessage(_, msg) => self.chat(key, &msg.data, now),
                _ => {}
            }
        }
    }

    fn event(&mut self, key: PeerKey, ev: RTCPeerConnectionEvent, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let (role, owner) = (peer.role, peer.participant);
        match ev {
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                rtc::peer_connection::state::RTCIceConnectionState::Connected,
            ) => {
                // When this side is the DTLS client, its first flight is queued until the
                // next timer (up to ~200 ms away): run the timers now so it leaves at once.
                let _ = peer.pc.handle_timeout(now);
                self.mark_touched(key);
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                tracing::debug!(?role, %state, "connection state");
                match state {
                    RTCPeerConnectionState::Connected => {
                        peer.connected = true;
                        if role == Role::Subscriber {
                            self.activate_down_tracks(owner, now);
                        }
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        peer.connected = false;
                        self.doomed.push((owner, Removal::MediaFailed));
                    }
                    RTCPeerConnectionState::Disconnected => peer.connected = false,
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init))
                if role == Role::Publisher =>
            {
                if let Some(rt) = peer.received.get(&init.track_id)
                    && init.rid.is_none()
                    && rt.media_ssrc == init.ssrc
                {
                    // Renegotiation re-announces tracks already open.
                    return;
                }
                let Some((codec, kind, mid, audio_level)) =
                    peer.describe_receiver(init.receiver_id, init.ssrc)
                else {
                    return;
                };
                self.track_opened(
                    key,
                    owner,
                    init.track_id,
                    init.receiver_id,
                    init.ssrc,
                    init.rid,
                    codec,
                    kind,
                    mid,
                    audio_level,
                );
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id))
                if role == Role::Publisher =>
            {
                if let Some(rt) = peer.received.remove(&track_id) {
                    self.unpublish(owner, &rt.track);
                }
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id))
                if role == Role::Subscriber =>
            {
                if let Some((chat_id, open)) = peer.chat.as_mut()
                    && *chat_id == id
                {
                    *open = true;
                    self.replay_chat(owner, now);
                }
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnClose(id))
                if role == Role::Subscriber =>
            {
                if let Some((chat_id, open)) = peer.chat.as_mut()
                    && *chat_id == id
                {
                    *open = false;
                }
            }
            _ => {}
        }
    }

    fn unpublish(&mut self, owner: ParticipantKey, track: &TrackId) {
        let Some(p) = self.participants.get_mut(&owner) else {
            return;
        };
        p.tracks.retain(|t| t != track);
        let room_id = p.room.clone();
        let Some(t) = self
            .rooms
            .get_mut(&room_id)
            .and_then(|r| r.tracks.remove(track))
        else {
            return;
        };
        SfuStats::gauge(&self.stats.published_tracks, -1);
        if let Some(room) = self.rooms.get_mut(&room_id) {
            room.taps
                .retain(|tap| tap.send(crate::sink::TapEvent::TrackEnded(track.clone())));
        }
        if let Some(p) = self.participants.get(&owner) {
            self.emit(crate::events::RoomEvent::TrackUnpublished {
                room: room_id.clone(),
                participant_id: p.id.clone(),
                track_id: track.clone(),
            });
        }
        for d in t.down {
            SfuStats::gauge(&self.stats.down_tracks, -1);
            if let Some(peer) = self.peers.get_mut(&d.sub_peer) {
                peer.remove_down_track(d.slot);
            }
            if let Some(s) = self.participants.get_mut(&d.subscriber) {
                s.needs_offer = true;
            }
        }
        if let Some(info) = self.participant_info(owner) {
            self.broadcast(
                &room_id,
                None,
                ServerMessage::ParticipantUpdated { participant: info },
            );
        }
    }

    fn chat(&mut self, peer_key: PeerKey, data: &[u8], now: Instant) {
        let Some(peer) = self.peers.get(&peer_key) else {
            return;
        };
        if peer.role != Role::Subscriber {
            return;
        }
        let from = peer.participant;
        let Some(p) = self.participants.get(&from) else {
            return;
        };
        let (request, text) = crate::chat::parse_chat(data, self.config.chat_max_bytes);
        if !p.grants.can_chat || p.grants.hidden {
            self.refuse(
                from,
                request,
                ErrorCode::Forbidden,
                "your access token does not allow chatting",
            );
            return;
        }
        if p.chat_limit.check().is_err() {
            SfuStats::inc(&self.stats.chat_dropped);
            let max = self.config.chat_per_second;
            self.refuse(
                from,
                request,
                ErrorCode::RateLimited,
                format!("at most {max} chat messages per second; this one was not sent"),
            );
            return;
        }
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                let code = match e {
                    crate::chat::ChatError::TooLong { .. } => ErrorCode::ChatTooLong,
                    _ => ErrorCode::ChatInvalid,
                };
                self.refuse(from, request, code, e.to_string());
                return;
            }
        };
        let Some(p) = self.participants.get(&from) else {
            return;
        };
        let (pid, name, room_id) = (p.id.clone(), p.name.clone(), p.room.clone());
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        let msg = room.chat.push(pid, name, text, unix_ms());
        SfuStats::inc(&self.stats.chat_messages);
        let Ok(json) = serde_json::to_string(&msg) else {
            return;
        };
        let members: Vec<_> = room
            .members
            .iter()
            .copied()
            .filter(|k| *k != from)
            .collect();
        for m in members {
            self.send_chat_to(m, &json, now);
        }
    }

    fn send_chat_to(&mut self, key: ParticipantKey, json: &str, now: Instant) {
        let Some(sub) = self.participants.get(&key).map(|p| p.sub) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&sub) else {
            return;
        };
        match peer.send_chat(json, now, CHAT_MAX_OUTSTANDING) {
            ChatSend::Sent => self.mark_touched(sub),
            // Not open yet: the history replay on open will deliver it.
            ChatSend::NotOpen => {}
            ChatSend::Dropped => SfuStats::inc(&self.stats.chat_dropped),
        }
    }

    fn replay_chat(&mut self, key: ParticipantKey, now: Instant) {
        let Some(room_id) = self.participants.get(&key).map(|p| p.room.clone()) else {
            return;
        };
        let Some(room) = self.rooms.get(&room_id) else {
            return;
        };
        let history: Vec<String> = room
            .chat
            .replay()
            .filter_map(|m: ChatOut| serde_json::to_string(&m).ok())
            .collect();
        for json in history {
            self.send_chat_to(key, &json, now);
        }
    }

    /// Offers to every subscriber whose down-tracks changed and who has no offer pending.
    pub(super) fn send_offers(&mut self) {
        let due: Vec<ParticipantKey> = self
            .participants
            .iter()
            .filter(|(_, p)| p.needs_offer && p.sub_state == SubState::Stable)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(p) = self.participants.get_mut(&key) else {
                continue;
            };
            p.needs_offer = false;
            let sub = p.sub;
            let announce = self.announce;
            let Some(peer) = self.peers.get_mut(&sub) else {
                continue;
            };
            match peer.create_offer(announce) {
                Ok(sdp) => {
                    let mids = peer.slot_mids();
                    let tracks = self.describe_slots(key, &mids);
                    let offer = ServerMessage::Offer { sdp, tracks };
                    if let Some(p) = self.participants.get_mut(&key) {
                        p.sub_state = SubState::AwaitingAnswer;
                        p.pending_offer = Some((offer.clone(), p.attached));
                    }
                    self.mark_touched(sub);
                    self.send_to(key, offer);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot create subscriber offer");
                    self.send_to(
                        key,
                        ServerMessage::error(ErrorCode::Internal, e.to_string()),
                    );
                }
            }
        }
    }

    fn describe_slots(
        &self,
        key: ParticipantKey,
        mids: &[(usize, String)],
    ) -> Vec<SubscribedTrack> {
        let Some(p) = self.participants.get(&key) else {
            return Vec::new();
        };
        let Some(room) = self.rooms.get(&p.room) else {
            return Vec::new();
        };
        let Some(peer) = self.peers.get(&p.sub) else {
            return Vec::new();
        };
        mids.iter()
            .filter_map(|(slot, mid)| {
                let s = peer.senders.get(*slot)?.as_ref()?;
                let t = room.tracks.get(&s.track)?;
                Some(SubscribedTrack {
                    mid: mid.clone(),
                    track_id: t.id.clone(),
                    participant_id: self.participants.get(&t.owner)?.id.clone(),
                    kind: t.kind,
                    source: t.source,
                })
            })
            .collect()
    }
}

/// A participant's chat allowance: `per_second`, with bursts of twice as many.
impl Worker {
    /// `joined` for `key`: who it is, who else is in the room, the limits, its grants.
    pub(super) fn joined_message(&self, key: ParticipantKey) -> Option<ServerMessage> {
        let p = self.participants.get(&key)?;
        let room = self.rooms.get(&p.room)?;
        let others: Vec<ParticipantInfo> = room
            .members
            .iter()
            .filter(|k| **k != key && self.visible(**k))
            .filter_map(|k| self.participant_info(*k))
            .collect();
        Some(ServerMessage::Joined {
            protocol: PROTOCOL_VERSION,
            room: p.room.clone(),
            participant: self.participant_info(key)?,
            participants: others,
            config: ClientConfig {
                chat_max_bytes: self.config.chat_max_bytes,
                chat_history: self.config.chat_history,
                max_message_bytes: self.config.max_message_bytes,
            },
            grants: p.grants,
            resume_token: p.resume_token.clone(),
            request_id: None,
        })
    }
}

fn chat_limiter(per_second: u32) -> governor::DefaultDirectRateLimiter {
    let rate = std::num::NonZeroU32::new(per_second.max(1)).expect("at least 1");
    let burst = rate.saturating_mul(std::num::NonZeroU32::new(2).expect("2 is not 0"));
    governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(burst))
}
