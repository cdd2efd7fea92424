//! A room as a sans-IO state machine: who is in it, what they publish, who receives
//! what at which layer, their negotiation state, chat, active speakers and recordings.
//!
//! The shape is str0m's: the worker feeds inputs (a method per input, each taking `now`)
//! and drains [`Room::poll_output`] after each. Outputs are what only IO can do: send a
//! message to a participant's session or data channel, open or close a down-track on a
//! subscriber connection, create or apply SDP, ask a publisher for a keyframe, emit a
//! webhook event, remove a participant's connections. Work that needs a peer connection
//! and comes back with a result (answering an offer, applying an answer, creating an
//! offer) is an output followed by an input carrying the result.
//!
//! Two things are direct calls, not outputs, because they happen per packet: the fan-out
//! of an RTP packet to its down-tracks ([`Room::forward`], with a callback that writes
//! each copy), and the hand-off to recording taps (bounded, non-blocking channels).
//!
//! The room never sees a socket, a peer connection or a clock: tests drive it with
//! injected time (`tests/room.rs`).
//!
//! - [`track`]: a published track, its layers and down-tracks (producer, consumers).
//! - [`member`]: one participant's state in the room.
//! - [`media`]: tracks opening and closing, forwarding, feedback, keyframe requests.
//! - [`negotiate`]: publisher offers, subscriber offers (one in flight, from a dirty
//!   list) and their answers.
//! - [`alloc`]: periodic decisions: layer allocation, last-N, active speakers, dynacast.
//! - [`admin`]: chat, recording taps and administration.
//! - [`presence`]: raised hands and reactions.
//! - [`relay`]: a track's copy to a room copy on another worker or node (issue 15, the
//!   pure part: relays out, wants and keyframe requests back).
//! - [`harness`]: drives a room without IO, for tests and benchmarks.

mod admin;
mod alloc;
pub mod copy;
pub mod harness;
mod media;
pub mod member;
mod negotiate;
mod presence;
pub mod relay;
mod removal;
pub mod track;

pub use alloc::PACED_AT_LEAST;
pub use copy::{Fact, RelayedTrack, Remote};
pub use media::{Feedback, TrackOpen, rewrite_vp8};
pub use member::{JoinInfo, Pref};
pub use negotiate::Applied;
pub use relay::{RelayKey, RelaySummary, Upstream};
pub use removal::Removal;
pub use track::{DownTrack, Emit, Fanout, LayerIn, PublishedTrack, layer_of_rid, rid_layers};

use crate::config::SfuConfig;
use crate::keys::{ParticipantKey, PeerKey, TrackKey};
use crate::peer::TrackCodec;
use crate::stats::SfuStats;
use confab_proto::{
    ClientConfig, ClientMessage, ErrorCode, IceCandidate, MediaKind, PROTOCOL_VERSION,
    ParticipantInfo, PcTarget, RequestId, RoomId, ServerMessage, TrackId,
};
use member::{Member, SubState};
use rustc_hash::FxHashMap;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Where [`Room::forward`] sends one copy of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest<'a> {
    /// A subscriber connection's down-track at `slot`.
    Down { sub_peer: PeerKey, slot: usize },
    /// A copy of this room elsewhere ([`relay`]), where the track is known by its id.
    Relay { to: RelayKey, track: &'a TrackId },
}

/// What the room asks of the IO around it.
#[derive(Debug)]
pub enum Output {
    /// A signaling message to a participant's session.
    Signal {
        to: ParticipantKey,
        msg: ServerMessage,
    },
    /// A chat frame (JSON) on a participant's data channel.
    Chat {
        to: ParticipantKey,
        json: Arc<str>,
    },
    /// Add a sender for `track` at `slot` of the subscriber's connection (not negotiated
    /// until the next offer is answered). If that fails, call [`Room::down_track_failed`].
    OpenDownTrack {
        subscriber: ParticipantKey,
        sub_peer: PeerKey,
        slot: usize,
        track: TrackId,
        owner: confab_proto::ParticipantId,
        kind: MediaKind,
        codec: TrackCodec,
    },
    CloseDownTrack {
        sub_peer: PeerKey,
        slot: usize,
    },
    /// The subscriber's down-tracks changed: create an offer, then call
    /// [`Room::offer_created`].
    CreateOffer {
        subscriber: ParticipantKey,
        sub_peer: PeerKey,
        /// With new ICE credentials (the participant asked for an ICE restart).
        restart_ice: bool,
    },
    /// Apply a publisher's offer on its publisher connection (created if it has none),
    /// then call [`Room::offer_answered`].
    AnswerOffer {
        participant: ParticipantKey,
        request: Option<RequestId>,
        sdp: String,
    },
    /// Apply a subscriber's answer, then call [`Room::answer_applied`].
    ApplyAnswer {
        participant: ParticipantKey,
        sub_peer: PeerKey,
        request: Option<RequestId>,
        sdp: String,
    },
    /// Add a client's ICE candidate to one of its connections; on failure, call
    /// [`Room::refuse`].
    AddCandidate {
        participant: ParticipantKey,
        peer: PeerKey,
        request: Option<RequestId>,
        candidate: IceCandidate,
    },
    /// Ask a publisher for a keyframe of one encoding.
    RequestKeyframe {
        pub_peer: PeerKey,
        rtc_id: String,
        ssrc: u32,
    },
    /// A fact for every other copy of this room ([`copy`]).
    Fact(Fact),
    /// A message to the home of a track this room relays ([`relay::Upstream`]).
    Relay {
        to: RelayKey,
        msg: Upstream,
    },
    /// A room event for webhooks.
    Event(crate::events::RoomEvent),
    /// The participant is out of the room: close its connections and its session (its
    /// last message, if any, was output before).
    Removed {
        participant: ParticipantKey,
        sub_peer: PeerKey,
        pub_peer: Option<PeerKey>,
    },
}

/// A join the room refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinRefusal {
    Full { max: usize },
}

/// What a publisher connection made of an offer: the answer and the mids it has, or why
/// the offer was refused.
#[derive(Debug, Clone)]
pub enum OfferResult {
    Answered { sdp: String, mids: Vec<String> },
    Refused { code: ErrorCode, message: String },
}

pub struct Room {
    pub id: RoomId,
    config: Arc<SfuConfig>,
    stats: Arc<SfuStats>,
    /// Participants, and their join order.
    members: FxHashMap<ParticipantKey, Member>,
    order: Vec<ParticipantKey>,
    tracks: slab::Slab<PublishedTrack>,
    track_ids: HashMap<TrackId, TrackKey>,
    chat: crate::chat::ChatLog,
    speakers: crate::speaker::SpeakerDetector<ParticipantKey>,
    /// When members' `downlink` reports were last considered.
    downlink_at: Option<Instant>,
    /// Recording and hook sessions receiving this room's media.
    taps: Vec<crate::sink::Tap>,
    /// Subscribers whose down-tracks changed since their last offer (each once).
    dirty: Vec<ParticipantKey>,
    outputs: VecDeque<Output>,
    /// Makes track ids unique on the worker: `<worker><counter>`.
    /// Track ids are `TR_<worker><random>-<n>`: unique across the room's copies on other
    /// workers and nodes.
    track_prefix: String,
    next_track: u64,
    /// Participants of the room's other copies ([`copy`]), by their key here.
    remotes: FxHashMap<ParticipantKey, Remote>,
    remote_order: Vec<ParticipantKey>,
    remote_ids: HashMap<confab_proto::ParticipantId, ParticipantKey>,
    next_remote: u64,
    /// The room has copies elsewhere: local changes are told as facts.
    copied: bool,
    /// A new copy waiting for the others' snapshots (how many, and until when at most):
    /// the participants who join meanwhile get their `joined` (and their first offer)
    /// once it knows the whole room.
    syncing: Option<(usize, Instant)>,
    held: Vec<(ParticipantKey, Option<RequestId>)>,
}

impl Room {
    pub fn new(
        id: RoomId,
        config: Arc<SfuConfig>,
        stats: Arc<SfuStats>,
        track_prefix: usize,
    ) -> Self {
        Self {
            id,
            chat: crate::chat::ChatLog::new(config.chat_history),
            config,
            stats,
            members: FxHashMap::default(),
            order: Vec::new(),
            tracks: slab::Slab::new(),
            track_ids: HashMap::new(),
            speakers: crate::speaker::SpeakerDetector::new(Default::default()),
            downlink_at: None,
            taps: Vec::new(),
            dirty: Vec::new(),
            outputs: VecDeque::new(),
            track_prefix: format!("{track_prefix}{:06x}-", rand::random::<u32>() & 0xff_ffff),
            next_track: 1,
            remotes: FxHashMap::default(),
            remote_order: Vec::new(),
            remote_ids: HashMap::new(),
            next_remote: 0,
            copied: false,
            syncing: None,
            held: Vec::new(),
        }
    }

    /// The next thing the IO must do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(o) = self.outputs.pop_front() {
            return Some(o);
        }
        self.next_offer()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Participants in join order.
    pub fn members(&self) -> &[ParticipantKey] {
        &self.order
    }

    pub fn has(&self, key: ParticipantKey) -> bool {
        self.members.contains_key(&key)
    }

    pub fn track(&self, key: TrackKey) -> Option<&PublishedTrack> {
        self.tracks.get(key.0)
    }

    pub fn tracks(&self) -> impl Iterator<Item = (TrackKey, &PublishedTrack)> {
        self.tracks.iter().map(|(k, t)| (TrackKey(k), t))
    }

    pub fn track_key(&self, id: &TrackId) -> Option<TrackKey> {
        self.track_ids.get(id).copied()
    }

    pub fn member(&self, key: ParticipantKey) -> Option<&Member> {
        self.members.get(&key)
    }

    fn out(&mut self, o: Output) {
        self.outputs.push_back(o);
    }

    fn signal(&mut self, to: ParticipantKey, msg: ServerMessage) {
        self.out(Output::Signal { to, msg });
    }

    /// Tells a participant its request was refused.
    pub fn refuse(
        &mut self,
        to: ParticipantKey,
        request: Option<RequestId>,
        code: ErrorCode,
        message: impl Into<String>,
    ) {
        self.signal(to, ServerMessage::error(code, message).reply_to(request));
    }

    fn broadcast(&mut self, except: Option<ParticipantKey>, msg: ServerMessage) {
        for i in 0..self.order.len() {
            let k = self.order[i];
            // One whose `joined` is held learns it all from that.
            if Some(k) != except && !self.held.iter().any(|(h, _)| *h == k) {
                self.signal(k, msg.clone());
            }
        }
    }

    fn event(&mut self, ev: crate::events::RoomEvent) {
        self.out(Output::Event(ev));
    }

    /// Whether the others see this participant (hidden ones are never announced).
    fn visible(&self, key: ParticipantKey) -> bool {
        self.members.get(&key).is_some_and(|m| !m.grants.hidden)
    }

    pub fn participant_info(&self, key: ParticipantKey) -> Option<ParticipantInfo> {
        let m = self.members.get(&key)?;
        Some(ParticipantInfo {
            id: m.id.clone(),
            name: m.name.clone(),
            joined_at: m.joined_at,
            hand_raised: m.hand_raised,
            tracks: m
                .tracks
                .iter()
                .filter_map(|t| self.tracks.get(t.0).map(PublishedTrack::info))
                .collect(),
        })
    }

    fn announce_update(&mut self, key: ParticipantKey) {
        if self.copied
            && let Some(m) = self.members.get(&key)
        {
            for t in m.tracks.clone() {
                self.tell_track(t);
            }
        }
        if self.visible(key)
            && let Some(info) = self.participant_info(key)
        {
            self.broadcast(
                None,
                ServerMessage::ParticipantUpdated { participant: info },
            );
        }
    }

    /// `active_speakers` as it stands, if anyone speaks.
    fn speakers_message(&self) -> Option<ServerMessage> {
        let speakers: Vec<_> = self
            .speakers
            .speakers()
            .iter()
            .filter_map(|k| self.id_of(*k))
            .collect();
        (!speakers.is_empty()).then_some(ServerMessage::ActiveSpeakers { speakers })
    }

    /// `joined` for `key`: who it is, who else is in the room, the limits, its grants.
    pub fn joined_message(&self, key: ParticipantKey) -> Option<ServerMessage> {
        let m = self.members.get(&key)?;
        let others: Vec<ParticipantInfo> = self
            .order
            .iter()
            .filter(|k| **k != key && self.visible(**k))
            .filter_map(|k| self.participant_info(*k))
            .chain(
                self.remote_order
                    .iter()
                    .filter_map(|k| self.remote_info(*k)),
            )
            .collect();
        Some(ServerMessage::Joined {
            protocol: PROTOCOL_VERSION,
            room: self.id.clone(),
            participant: self.participant_info(key)?,
            participants: others,
            config: ClientConfig {
                chat_max_bytes: self.config.chat_max_bytes,
                chat_history: self.config.chat_history,
                max_message_bytes: self.config.max_message_bytes,
            },
            grants: m.grants,
            resume_token: m.resume_token.clone(),
            // The signaling layer mints these (it holds the TURN secret).
            ice_servers: Vec::new(),
            request_id: None,
        })
    }

    /// A participant joins: it is told `joined` (its first offer follows), the others
    /// that it joined, and everything published becomes a down-track of it.
    pub fn join(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        info: JoinInfo,
    ) -> Result<(), JoinRefusal> {
        let max = self.config.max_participants_per_room;
        if self.order.len() >= max {
            return Err(JoinRefusal::Full { max });
        }
        // Told apart from whoever the room already shows under that name.
        let name = if self.config.unique_names && !info.grants.hidden {
            let taken = self
                .order
                .iter()
                .filter(|k| self.visible(**k))
                .filter_map(|k| self.members.get(k).map(|m| &m.name));
            crate::names::unique_name(info.name.clone(), taken)
        } else {
            info.name.clone()
        };
        let request = info.request_id.clone();
        let hidden = info.grants.hidden;
        let member = Member::new(now, &self.config, JoinInfo { name, ..info });
        let event = crate::events::RoomEvent::ParticipantJoined {
            room: self.id.clone(),
            participant_id: member.id.clone(),
            name: member.name.to_string(),
            identity: member.identity.clone(),
        };
        self.members.insert(key, member);
        self.order.push(key);
        self.mark_dirty(key);
        SfuStats::gauge(&self.stats.participants, 1);
        let keys: Vec<TrackKey> = self.tracks.iter().map(|(k, _)| TrackKey(k)).collect();
        for t in keys {
            self.subscribe(key, t);
        }
        if self.syncing.is_some() {
            self.held.push((key, request));
        } else {
            self.send_joined(key, request);
        }
        if !hidden && let Some(me) = self.participant_info(key) {
            self.tell(copy::Fact::Joined(me.clone()));
            self.broadcast(
                Some(key),
                ServerMessage::ParticipantJoined { participant: me },
            );
        }
        self.event(event);
        Ok(())
    }

    /// `joined`, then who speaks now (the list is only sent when it changes, and it may not
    /// change for a long while after someone joins).
    fn send_joined(&mut self, key: ParticipantKey, request: Option<RequestId>) {
        if let Some(joined) = self.joined_message(key) {
            self.signal(key, joined.reply_to(request));
        }
        if let Some(msg) = self.speakers_message() {
            self.signal(key, msg);
        }
    }

    /// Removes a participant: its tracks (with every down-track they fed) and its
    /// subscriptions go, the others are told. Returns whether it was here.
    pub fn leave(&mut self, key: ParticipantKey, why: Removal) -> bool {
        let Some(tracks) = self.members.get(&key).map(|m| m.tracks.clone()) else {
            return false;
        };
        if let Some(notice) = why.notice() {
            self.signal(key, notice);
        }
        // Its tracks go first (while it is still known, for their events).
        for t in tracks {
            self.remove_track(t);
        }
        let Some(m) = self.members.remove(&key) else {
            return false;
        };
        SfuStats::gauge(&self.stats.participants, -1);
        self.order.retain(|k| *k != key);
        self.dirty.retain(|k| *k != key);
        self.held.retain(|(k, _)| *k != key);
        self.speakers.remove(&key);
        // Its subscriptions to everyone else's tracks (its connection closes with them).
        for (_, t) in self.tracks.iter_mut() {
            if t.remove_down(key).is_some() {
                SfuStats::gauge(&self.stats.down_tracks, -1);
            }
        }
        tracing::info!(participant = %m.id, reason = why.as_str(), "left");
        self.out(Output::Removed {
            participant: key,
            sub_peer: m.sub_peer,
            pub_peer: m.pub_peer,
        });
        self.event(crate::events::RoomEvent::ParticipantLeft {
            room: self.id.clone(),
            participant_id: m.id.clone(),
            reason: why.as_str().to_string(),
        });
        if !m.grants.hidden {
            self.tell(copy::Fact::Left(m.id.clone()));
        }
        if !self.order.is_empty() && !m.grants.hidden {
            self.broadcast(
                None,
                ServerMessage::ParticipantLeft {
                    participant_id: m.id.clone(),
                },
            );
        }
        true
    }

    /// The participant's signaling connection dropped; it may come back ([`Room::resync`]).
    pub fn detach(&mut self, key: ParticipantKey) {
        if let Some(m) = self.members.get_mut(&key) {
            m.attached = false;
        }
    }

    /// The participant's session resumed on a new connection: a fresh `joined`, and
    /// again the subscriber offer it may have lost with the old connection.
    pub fn resync(&mut self, key: ParticipantKey) {
        if let Some(joined) = self.joined_message(key) {
            self.signal(key, joined);
        }
        if let Some(msg) = self.speakers_message() {
            self.signal(key, msg);
        }
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        m.attached = true;
        let resend = match &m.pending_offer {
            Some((offer, true)) if m.sub_state == SubState::AwaitingAnswer => Some(offer.clone()),
            _ => None,
        };
        if let Some(offer) = resend {
            self.signal(key, offer);
        }
    }

    /// Opens a down-track of `track` toward `subscriber` (negotiated with its next offer).
    fn subscribe(&mut self, subscriber: ParticipantKey, track: TrackKey) {
        let Some(t) = self.tracks.get(track.0) else {
            return;
        };
        let Some(owner) = self.id_of(t.owner) else {
            return;
        };
        let Some(m) = self.members.get_mut(&subscriber) else {
            return;
        };
        if !m.grants.can_subscribe || t.owner == subscriber || t.down_of(subscriber).is_some() {
            return;
        }
        let slot = m.take_slot();
        let sub_peer = m.sub_peer;
        let Some(t) = self.tracks.get_mut(track.0) else {
            return;
        };
        t.add_down(subscriber, sub_peer, slot);
        SfuStats::gauge(&self.stats.down_tracks, 1);
        let open = Output::OpenDownTrack {
            subscriber,
            sub_peer,
            slot,
            track: t.id.clone(),
            owner,
            kind: t.kind,
            codec: t.codec.clone(),
        };
        self.out(open);
        self.mark_dirty(subscriber);
    }

    /// The subscriber's connection could not add the sender of a down-track.
    pub fn down_track_failed(&mut self, subscriber: ParticipantKey, slot: usize) {
        let found = self
            .tracks
            .iter()
            .find(|(_, t)| t.down_of(subscriber).is_some_and(|d| d.slot == slot))
            .map(|(k, _)| k);
        if let Some(k) = found
            && let Some(t) = self.tracks.get_mut(k)
            && t.remove_down(subscriber).is_some()
        {
            SfuStats::gauge(&self.stats.down_tracks, -1);
            tracing::warn!(track = %t.id, "cannot add down-track");
        }
        if let Some(m) = self.members.get_mut(&subscriber) {
            m.free_slot(slot);
        }
    }

    /// A participant's message (other than `join` and `leave`, which the worker turns
    /// into [`Room::join`] and [`Room::leave`]); refusals name `request`.
    pub fn client(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        request: Option<RequestId>,
        msg: ClientMessage,
    ) {
        if !self.members.contains_key(&key) {
            return;
        }
        match msg {
            ClientMessage::Publish { sdp, tracks } => self.publish(now, key, request, sdp, tracks),
            ClientMessage::Answer { sdp } => self.answer(now, key, request, sdp),
            ClientMessage::Candidate { target, candidate } => {
                let Some(m) = self.members.get(&key) else {
                    return;
                };
                let peer = match target {
                    PcTarget::Subscriber => Some(m.sub_peer),
                    PcTarget::Publisher => m.pub_peer,
                };
                match peer {
                    Some(peer) => self.out(Output::AddCandidate {
                        participant: key,
                        peer,
                        request,
                        candidate,
                    }),
                    None => self.refuse(
                        key,
                        request,
                        ErrorCode::OutOfOrder,
                        "a publisher candidate arrived before any publish offer",
                    ),
                }
            }
            ClientMessage::Mute { source, muted } => self.mute(key, source, muted),
            ClientMessage::Subscription {
                track_id,
                subscribed,
                quality,
                height,
                ..
            } => {
                let known = self
                    .track_key(&track_id)
                    .and_then(|t| self.tracks.get(t.0))
                    .is_some_and(|t| t.owner != key);
                if !known {
                    self.refuse(
                        key,
                        request,
                        ErrorCode::UnknownTrack,
                        format!("no remote track {track_id} in this room"),
                    );
                    return;
                }
                if let Some(m) = self.members.get_mut(&key) {
                    m.prefs.insert(
                        track_id,
                        Pref {
                            subscribed,
                            quality,
                            height,
                        },
                    );
                }
                self.allocate(key, now);
            }
            ClientMessage::Pin { participant_ids } => {
                // Members of this copy or of another one (a remote member is pinned
                // like a local one).
                let pins = self
                    .order
                    .iter()
                    .chain(&self.remote_order)
                    .copied()
                    .filter(|k| {
                        self.id_of(*k)
                            .is_some_and(|id| participant_ids.contains(&id))
                    })
                    .collect();
                if let Some(m) = self.members.get_mut(&key) {
                    m.pins = pins;
                }
                self.allocate(key, now);
            }
            ClientMessage::RestartIce => self.restart_ice(now, key, request),
            ClientMessage::RaiseHand { raised } => self.raise_hand(key, request, raised),
            ClientMessage::LowerHand { participant_id } => {
                self.lower_hand(key, request, participant_id)
            }
            ClientMessage::Reaction { emoji } => self.react(now, key, request, emoji),
            ClientMessage::Leave => {
                self.leave(key, Removal::Left);
            }
            // Signaling answers a second join itself.
            ClientMessage::Join { .. } => {}
        }
    }

    fn mute(&mut self, key: ParticipantKey, source: confab_proto::TrackSource, muted: bool) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let mut changed = false;
        for t in m.tracks.clone() {
            if let Some(t) = self.tracks.get_mut(t.0)
                && t.source == source
                && t.muted != muted
                && !t.admin_muted
            {
                t.muted = muted;
                changed = true;
            }
        }
        if changed {
            self.announce_update(key);
        }
    }

    /// The participants that did not complete their first negotiation by their deadline
    /// are removed.
    fn enforce_deadlines(&mut self, now: Instant) {
        let late: Vec<ParticipantKey> = self
            .order
            .iter()
            .copied()
            .filter(|k| {
                self.members
                    .get(k)
                    .is_some_and(|m| !m.negotiated && now >= m.negotiate_by)
            })
            .collect();
        for k in late {
            if let Some(m) = self.members.get(&k) {
                tracing::info!(participant = %m.id, "removed: first negotiation not completed in time");
            }
            SfuStats::inc(&self.stats.negotiation_timeouts);
            self.leave(k, Removal::NegotiationTimeout);
        }
    }

    /// Removes everyone (the room closes); returns who was here.
    pub fn close(&mut self, why: Removal) -> Vec<ParticipantKey> {
        let all = self.order.clone();
        for k in &all {
            self.leave(*k, why);
        }
        all
    }
}

impl Room {
    /// How many published tracks, down-tracks and recording taps the room holds (the
    /// gauges to give back if it is dropped whole).
    pub fn counts(&self) -> (usize, usize, usize) {
        let downs = self.tracks.iter().map(|(_, t)| t.down.len()).sum();
        (self.tracks.len(), downs, self.taps.len())
    }
}
