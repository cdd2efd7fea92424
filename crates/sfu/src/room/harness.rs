//! Drives a [`Room`] without sockets or peer connections, for tests and benchmarks: it
//! plays the worker's part (answers offers, opens tracks, applies answers) with fake SDP,
//! records what each participant was told, and checks the room's invariants.
//!
//! Time is injected: [`Harness::advance`] moves the clock and runs the room's tick.

use super::{Feedback, JoinInfo, OfferResult, Output, Room, TrackOpen};
use crate::config::SfuConfig;
use crate::keys::{ParticipantKey, PeerKey, TrackKey};
use crate::peer::TrackCodec;
use crate::rtp::Codec;
use crate::stats::SfuStats;
use confab_proto::signal::{Grants, PublishTrack};
use confab_proto::{
    ClientMessage, DisplayName, MediaKind, ParticipantId, Quality, ServerMessage, TrackId,
    TrackSource,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One participant as the harness plays it.
#[derive(Debug, Default)]
pub struct Client {
    pub sub_peer: Option<PeerKey>,
    pub pub_peer: Option<PeerKey>,
    /// Everything it was told, in order.
    pub inbox: Vec<ServerMessage>,
    pub chats: Vec<Arc<str>>,
    /// Its subscriber connection's down-track slots: slot -> room track id.
    pub slots: BTreeMap<usize, TrackId>,
    /// Offers created for it and not answered yet.
    pub offers_in_flight: u32,
    /// Offers created for it, and those with new ICE credentials.
    pub offers: u32,
    pub ice_restart_offers: u32,
    /// Whether the harness answers its offers by itself.
    pub answers: bool,
    /// Its published tracks.
    pub tracks: Vec<TrackKey>,
    pub removed: bool,
}

pub struct Harness {
    pub room: Room,
    pub now: Instant,
    pub clients: BTreeMap<ParticipantKey, Client>,
    /// Keyframe requests sent to publishers: (connection, ssrc).
    pub keyframe_requests: Vec<(PeerKey, u32)>,
    /// Copies relayed to room copies, as sent.
    pub relayed: Vec<(super::RelayKey, rtc::rtp::Packet)>,
    /// What the room sent to the homes of tracks it relays.
    pub upstream: Vec<(super::RelayKey, super::Upstream)>,
    /// Facts the room told its other copies.
    pub facts: Vec<super::Fact>,
    pub events: Vec<crate::events::RoomEvent>,
    /// The most offers ever in flight at once for one participant.
    pub max_offers_in_flight: u32,
    /// Whether participants joining from now on answer their offers by themselves.
    pub answer_new: bool,
    peer_owner: HashMap<PeerKey, ParticipantKey>,
    next_peer: u64,
    next_ssrc: u32,
}

/// A codec for fake tracks.
pub fn codec(kind: MediaKind) -> TrackCodec {
    let (codec, mime, rate) = match kind {
        MediaKind::Audio => (Codec::Opus, "audio/opus", 48000),
        MediaKind::Video => (Codec::Vp8, "video/VP8", 90000),
    };
    TrackCodec {
        codec,
        rtp: rtc::rtp_transceiver::rtp_sender::RTCRtpCodec {
            mime_type: mime.into(),
            clock_rate: rate,
            ..Default::default()
        },
        payload_type: 96,
    }
}

/// A VP8 RTP packet of `size` payload bytes as a publisher would send it: a keyframe (with
/// its start code and a 640x360 frame size) or a delta frame.
pub fn vp8_packet(ssrc: u32, seq: u16, keyframe: bool, size: usize) -> rtc::rtp::Packet {
    let mut payload = vec![0u8; size.max(11)];
    payload[0] = 0x10; // S, partition 0
    payload[1] = if keyframe { 0x00 } else { 0x01 };
    payload[4..7].copy_from_slice(&[0x9d, 0x01, 0x2a]);
    payload[7..9].copy_from_slice(&640u16.to_le_bytes());
    payload[9..11].copy_from_slice(&360u16.to_le_bytes());
    rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            payload_type: 96,
            sequence_number: seq,
            timestamp: seq as u32 * 3000,
            ssrc,
            ..Default::default()
        },
        payload: payload.into(),
    }
}

/// A fake SDP with `n` media sections (all sending).
fn sdp(n: usize) -> String {
    let mut s = String::from("v=0\r\n");
    for i in 0..n {
        s.push_str(&format!(
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:{i}\r\na=sendonly\r\n"
        ));
    }
    s
}

impl Harness {
    pub fn new(config: SfuConfig) -> Self {
        let now = Instant::now();
        let room = Room::new(
            confab_proto::RoomId::parse("harness").expect("a valid room id"),
            Arc::new(config),
            Arc::new(SfuStats::default()),
            0,
        );
        Self {
            room,
            now,
            clients: BTreeMap::new(),
            keyframe_requests: Vec::new(),
            relayed: Vec::new(),
            upstream: Vec::new(),
            facts: Vec::new(),
            events: Vec::new(),
            max_offers_in_flight: 0,
            answer_new: true,
            peer_owner: HashMap::new(),
            next_peer: 1,
            next_ssrc: 1000,
        }
    }

    pub fn stats(&self) -> &SfuStats {
        &self.room.stats
    }

    fn peer(&mut self, owner: ParticipantKey) -> PeerKey {
        let k = PeerKey(self.next_peer);
        self.next_peer += 1;
        self.peer_owner.insert(k, owner);
        k
    }

    /// Joins participant `n` with all grants; its offers are answered automatically.
    pub fn join(&mut self, n: u64) -> ParticipantKey {
        self.join_with(n, Grants::default())
    }

    pub fn join_with(&mut self, n: u64, grants: Grants) -> ParticipantKey {
        let key = ParticipantKey(n);
        let sub = self.peer(key);
        self.clients.insert(
            key,
            Client {
                sub_peer: Some(sub),
                answers: self.answer_new,
                ..Client::default()
            },
        );
        let info = JoinInfo {
            id: ParticipantId::from_suffix(format!("p{n}")),
            name: DisplayName::parse(&format!("P{n}")).expect("a valid name"),
            grants,
            identity: None,
            token_id: None,
            resume_token: String::new(),
            request_id: None,
            sub_peer: sub,
            joined_at: 0,
        };
        let r = self.room.join(self.now, key, info);
        assert!(r.is_ok(), "join {n}: {r:?}");
        self.run();
        key
    }

    pub fn leave(&mut self, key: ParticipantKey) {
        self.room.leave(key, super::Removal::Left);
        self.run();
    }

    pub fn id(&self, key: ParticipantKey) -> ParticipantId {
        ParticipantId::from_suffix(format!("p{}", key.0))
    }

    /// Sends a client message.
    pub fn send(&mut self, key: ParticipantKey, msg: ClientMessage) {
        self.room.client(self.now, key, None, msg);
        self.run();
    }

    /// Publishes tracks of these kinds and sources: an offer, its answer, and the tracks
    /// opening on the publisher connection. Returns the room's keys of the new tracks.
    pub fn publish(
        &mut self,
        key: ParticipantKey,
        tracks: &[(MediaKind, TrackSource)],
    ) -> Vec<TrackKey> {
        let before = self.clients.get(&key).map_or(0, |c| c.tracks.len());
        let offered: Vec<PublishTrack> = tracks
            .iter()
            .enumerate()
            .map(|(i, (_, source))| PublishTrack {
                mid: (before + i).to_string(),
                source: *source,
            })
            .collect();
        let n = before + tracks.len();
        self.room.client(
            self.now,
            key,
            None,
            ClientMessage::Publish {
                sdp: sdp(n),
                tracks: offered,
            },
        );
        self.run();
        let Some(pub_peer) = self.clients.get(&key).and_then(|c| c.pub_peer) else {
            return Vec::new();
        };
        let mut keys = Vec::new();
        for (i, (kind, _)) in tracks.iter().enumerate() {
            let ssrc = self.next_ssrc;
            self.next_ssrc += 1;
            let open = TrackOpen {
                rtc_id: format!("rtc{}-{}", key.0, before + i),
                pub_peer,
                ssrc,
                rid: None,
                codec: codec(*kind),
                kind: *kind,
                mid: Some((before + i).to_string()),
                audio_level_ext: None,
            };
            if let Some(t) = self.room.track_opened(self.now, key, open) {
                keys.push(t);
                if let Some(c) = self.clients.get_mut(&key) {
                    c.tracks.push(t);
                }
            }
            self.run();
        }
        keys
    }

    /// Closes a published track, as its publisher connection would.
    pub fn unpublish(&mut self, key: ParticipantKey, track: TrackKey) {
        if let Some(c) = self.clients.get_mut(&key) {
            c.tracks.retain(|t| *t != track);
        }
        self.room.track_closed(key, track);
        self.run();
    }

    pub fn subscribe(
        &mut self,
        key: ParticipantKey,
        track: &TrackId,
        subscribed: bool,
        quality: Quality,
    ) {
        self.send(
            key,
            ClientMessage::Subscription {
                track_id: track.clone(),
                subscribed,
                quality,
                width: None,
                height: None,
            },
        );
    }

    /// Moves the clock and runs the room's periodic work.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.room.tick(self.now);
        self.run();
    }

    /// Forwards one packet of `track`; returns the copies: (connection, slot, packet), the
    /// packet as it is sent (VP8 patch applied).
    pub fn rtp(
        &mut self,
        track: TrackKey,
        pkt: rtc::rtp::Packet,
    ) -> Vec<(PeerKey, usize, rtc::rtp::Packet)> {
        let mut out = Vec::new();
        let relayed = &mut self.relayed;
        self.room
            .forward(self.now, track, pkt, |dest, mut p, patch| {
                if let Some(patch) = patch {
                    let mut b = bytes::BytesMut::from(&p.payload[..]);
                    patch.apply(&mut b);
                    p.payload = b.freeze();
                }
                match dest {
                    super::Dest::Down { sub_peer, slot } => out.push((sub_peer, slot, p)),
                    super::Dest::Relay { to, .. } => relayed.push((to, p)),
                }
                true
            });
        self.run();
        out
    }

    /// Feedback from a subscriber about a track.
    pub fn feedback(&mut self, key: ParticipantKey, track: &TrackId, fb: Feedback) {
        self.room.feedback(self.now, key, track, fb);
        self.run();
    }

    /// Who owns a connection.
    pub fn owner(&self, peer: PeerKey) -> Option<ParticipantKey> {
        self.peer_owner.get(&peer).copied()
    }

    /// Applies the room's outputs until there are none.
    pub fn run(&mut self) {
        while let Some(o) = self.room.poll_output() {
            self.apply(o);
        }
    }

    fn apply(&mut self, o: Output) {
        match o {
            Output::Signal { to, msg } => {
                if let Some(c) = self.clients.get_mut(&to) {
                    c.inbox.push(msg);
                }
            }
            Output::Chat { to, json } => {
                if let Some(c) = self.clients.get_mut(&to) {
                    c.chats.push(json);
                }
            }
            Output::OpenDownTrack {
                subscriber,
                slot,
                track,
                ..
            } => {
                let c = self
                    .clients
                    .get_mut(&subscriber)
                    .expect("a known subscriber");
                assert!(
                    c.slots.insert(slot, track).is_none(),
                    "slot {slot} taken twice"
                );
            }
            Output::CloseDownTrack { sub_peer, slot } => {
                let owner = self.owner(sub_peer).expect("a known connection");
                if let Some(c) = self.clients.get_mut(&owner) {
                    assert!(
                        c.slots.remove(&slot).is_some(),
                        "closing a free slot {slot}"
                    );
                }
            }
            Output::CreateOffer {
                subscriber,
                restart_ice,
                ..
            } => {
                let c = self
                    .clients
                    .get_mut(&subscriber)
                    .expect("a known subscriber");
                c.offers_in_flight += 1;
                c.offers += 1;
                c.ice_restart_offers += u32::from(restart_ice);
                self.max_offers_in_flight = self.max_offers_in_flight.max(c.offers_in_flight);
                let mids: Vec<(usize, String)> =
                    c.slots.keys().map(|s| (*s, format!("s{s}"))).collect();
                let n = mids.len() + 1;
                let answers = c.answers;
                self.room.offer_created(subscriber, Ok((sdp(n), mids)));
                if answers {
                    self.room.client(
                        self.now,
                        subscriber,
                        None,
                        ClientMessage::Answer { sdp: sdp(n) },
                    );
                }
            }
            Output::AnswerOffer {
                participant,
                request,
                sdp,
            } => {
                let pub_peer = match self.clients.get(&participant).and_then(|c| c.pub_peer) {
                    Some(p) => p,
                    None => self.peer(participant),
                };
                if let Some(c) = self.clients.get_mut(&participant) {
                    c.pub_peer = Some(pub_peer);
                }
                let mids = (0..crate::sdp::section_count(&sdp))
                    .map(|i| i.to_string())
                    .collect();
                self.room.offer_answered(
                    participant,
                    request,
                    Some(pub_peer),
                    OfferResult::Answered {
                        sdp: "v=0\r\n".into(),
                        mids,
                    },
                    Duration::ZERO,
                );
            }
            Output::ApplyAnswer {
                participant,
                request,
                ..
            } => {
                let c = self
                    .clients
                    .get_mut(&participant)
                    .expect("a known subscriber");
                c.offers_in_flight = c.offers_in_flight.saturating_sub(1);
                let negotiated = vec![true; c.slots.keys().max().map_or(0, |m| m + 1)];
                let applied = super::Applied {
                    result: Ok(()),
                    cost: Duration::ZERO,
                    negotiated,
                    connected: true,
                };
                self.room
                    .answer_applied(self.now, participant, request, applied);
            }
            Output::AddCandidate { .. } => {}
            Output::RequestKeyframe { pub_peer, ssrc, .. } => {
                self.keyframe_requests.push((pub_peer, ssrc));
            }
            Output::Relay { to, msg } => self.upstream.push((to, msg)),
            Output::Fact(f) => self.facts.push(f),
            Output::Event(ev) => self.events.push(ev),
            Output::Removed { participant, .. } => {
                let c = self
                    .clients
                    .get_mut(&participant)
                    .expect("a known participant");
                c.removed = true;
                c.slots.clear();
                c.offers_in_flight = 0;
            }
        }
    }

    /// Checks the room's invariants; panics with what is wrong.
    pub fn check(&self) {
        let room = &self.room;
        let members: Vec<ParticipantKey> = room.members().to_vec();
        for (tk, t) in room.tracks() {
            // A relayed copy's owner is a remote member, and only such a track has one.
            let remote = room.remotes().find(|(k, _)| **k == t.owner);
            assert_eq!(
                remote.is_some(),
                t.relayed_from.is_some(),
                "track {}: relayed exactly when its owner is remote",
                t.id
            );
            assert!(
                members.contains(&t.owner) || remote.is_some_and(|(_, r)| r.tracks.contains(&tk)),
                "track {} outlives its owner",
                t.id
            );
            for d in &t.down {
                assert_ne!(d.subscriber, t.owner, "{} receives its own track", t.owner);
                assert!(
                    members.contains(&d.subscriber),
                    "a down-track outlives its subscriber"
                );
            }
            for m in &members {
                let subscribes =
                    *m != t.owner && room.member(*m).is_some_and(|x| x.grants.can_subscribe);
                let n = t.down.iter().filter(|d| d.subscriber == *m).count();
                assert_eq!(
                    n,
                    usize::from(subscribes),
                    "{m} has {n} down-tracks of {}",
                    t.id
                );
            }
            let _ = tk;
        }
        for (k, c) in &self.clients {
            if c.removed {
                continue;
            }
            assert!(
                c.offers_in_flight <= 1,
                "{k} has {} offers in flight",
                c.offers_in_flight
            );
            // Its connection's slots are exactly its down-tracks.
            let mut want: BTreeMap<usize, TrackId> = BTreeMap::new();
            for (_, t) in room.tracks() {
                if let Some(d) = t.down_of(*k) {
                    want.insert(d.slot, t.id.clone());
                }
            }
            assert_eq!(c.slots, want, "{k}'s slots");
        }
        assert!(self.max_offers_in_flight <= 1);
    }
}

/// Copies A (relay key 0) and B (relay key 1) of a room say hello to each other: each
/// applies the other's snapshot, then both run.
pub fn exchange_hellos(a: &mut Harness, b: &mut Harness) {
    use super::{Fact, RelayKey};
    let (to_a, to_b, now) = (RelayKey(0), RelayKey(1), a.now);
    for f in a.room.fact(now, to_b, Fact::Hello) {
        b.room.fact(now, to_a, f);
    }
    for f in b.room.fact(now, to_a, Fact::Hello) {
        a.room.fact(now, to_b, f);
    }
    a.run();
    b.run();
}
