//! Room copies: one room on several workers (issue 15). Each worker hosting participants
//! of a room has a copy of it: its own participants are members there, the others'
//! are *remote members* (who they are and what they publish), and their tracks are
//! relayed copies ([`super::relay`]). Copies keep each other informed with [`Fact`]s,
//! output as [`super::Output::Fact`] and applied with [`Room::fact`]: who joined or left,
//! each track (upserted: layers and mute state), chat. A copy joining the room says
//! [`Fact::Hello`] and is answered with the others' [`Room::snapshot`].

use super::relay::{RelayKey, WantsAnnouncer};
use super::{Output, PublishedTrack, Room};
use crate::allocator::MAX_LAYERS;
use crate::keys::{ParticipantKey, PeerKey, TrackKey};
use crate::peer::TrackCodec;
use crate::stats::SfuStats;
use confab_proto::{
    DisplayName, ParticipantId, ParticipantInfo, ServerMessage, TrackId, TrackInfo,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one copy of a room tells the others. Serialisable: between nodes facts travel
/// as JSON through Redis.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fact {
    /// A new copy: the others answer with their snapshots.
    Hello,
    /// One of the sender's participants (visible ones only; its tracks follow as
    /// [`Fact::Track`]).
    Joined(ParticipantInfo),
    Left(ParticipantId),
    /// A track of one of the sender's participants, as it is now.
    Track(RelayedTrack),
    TrackGone(TrackId),
    /// A publisher's sender report for one of the sender's tracks (recordings of the
    /// relayed copies date their files by it).
    SenderReport {
        track: TrackId,
        ssrc: u32,
        ntp: u64,
        rtp_ts: u32,
    },
    /// The sender's chat history (in its snapshot): a new copy merges them, so that its
    /// first participants get the room's history.
    History(Vec<confab_proto::ChatOut>),
    /// The end of the sender's snapshot (its answer to [`Fact::Hello`]).
    SnapshotEnd,
    /// A participant's hand was raised or lowered (by itself, or by a room admin on any
    /// copy: the participant's own copy applies it too).
    Hand {
        participant: ParticipantId,
        raised: bool,
    },
    /// One of the sender's participants reacted.
    Reaction {
        from: ParticipantId,
        emoji: confab_proto::Emoji,
    },
    /// A chat message one of the sender's participants sent.
    Chat {
        from: ParticipantId,
        name: DisplayName,
        text: String,
        unix_ms: u64,
    },
}

/// What a copy needs to re-publish a track relayed from its home.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RelayedTrack {
    pub owner: ParticipantId,
    pub info: TrackInfo,
    pub codec: TrackCodec,
    pub rids: [Option<String>; MAX_LAYERS],
    /// Received layers: (index, rid, SSRC).
    pub layers: Vec<(usize, Option<String>, u32)>,
    pub audio_level_ext: Option<u8>,
}

/// A participant of another copy.
#[derive(Debug, Clone)]
pub struct Remote {
    pub info: ParticipantInfo,
    /// The copy it is on.
    pub home: RelayKey,
    pub tracks: Vec<TrackKey>,
}

/// Remote members' keys are a range of their own, apart from the ones the node hands out.
const REMOTE_KEYS: u64 = 1 << 62;

impl PublishedTrack {
    fn relayed(&self, owner: &ParticipantId) -> RelayedTrack {
        RelayedTrack {
            owner: owner.clone(),
            info: self.info(),
            codec: self.codec.clone(),
            rids: self.rids.clone(),
            layers: self
                .layers
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.as_ref().map(|l| (i, l.rid.clone(), l.ssrc)))
                .collect(),
            audio_level_ext: self.audio_level_ext,
        }
    }
}

impl Room {
    /// The participant id of a member or a remote member.
    pub(super) fn id_of(&self, key: ParticipantKey) -> Option<ParticipantId> {
        self.members
            .get(&key)
            .map(|m| m.id.clone())
            .or_else(|| self.remotes.get(&key).map(|r| r.info.id.clone()))
    }

    /// The id and name of a member or a remote member.
    pub(super) fn who(&self, key: ParticipantKey) -> Option<(ParticipantId, DisplayName)> {
        self.members
            .get(&key)
            .map(|m| (m.id.clone(), m.name.clone()))
            .or_else(|| {
                self.remotes
                    .get(&key)
                    .map(|r| (r.info.id.clone(), r.info.name.clone()))
            })
    }

    pub fn remote_info(&self, key: ParticipantKey) -> Option<ParticipantInfo> {
        let r = self.remotes.get(&key)?;
        Some(ParticipantInfo {
            tracks: r
                .tracks
                .iter()
                .filter_map(|t| self.tracks.get(t.0).map(PublishedTrack::info))
                .collect(),
            ..r.info.clone()
        })
    }

    /// The room has copies on other workers or nodes: from now on its changes are told.
    pub fn set_copied(&mut self) {
        self.copied = true;
    }

    /// A new copy that said hello to `copies` others: whoever joins before their
    /// snapshots arrive (or `until`) gets `joined` then, with everyone in it.
    pub fn set_syncing(&mut self, copies: usize, until: Instant) {
        self.copied = true;
        if copies > 0 {
            self.syncing = Some((copies, until));
        }
    }

    /// The cascade transport counted the copies on other nodes that will answer this
    /// one's hello (they were counted as one until now).
    pub fn expect_copies(&mut self, n: usize) {
        if let Some((c, until)) = self.syncing {
            match (c - 1) + n {
                0 => self.synced(),
                c => self.syncing = Some((c, until)),
            }
        }
    }

    /// Ends the wait for snapshots (all arrived, or the time is up).
    pub(super) fn synced(&mut self) {
        self.syncing = None;
        for (key, request) in std::mem::take(&mut self.held) {
            self.send_joined(key, request);
        }
    }

    /// Periodic: a copy that did not answer does not hold the joins any longer.
    pub(super) fn sync_deadline(&mut self, now: Instant) {
        if self.syncing.is_some_and(|(_, until)| now >= until) {
            self.synced();
        }
    }

    /// The relays of this copy's tracks, for the admin API.
    pub fn relays(&self, now: Instant) -> Vec<super::relay::RelaySummary> {
        let mut out = Vec::new();
        for (_, t) in self.tracks.iter() {
            for r in &t.relays {
                let layers = (0..MAX_LAYERS as u8)
                    .filter(|l| r.wants(*l, now))
                    .fold(0u8, |m, l| m | (1 << l));
                out.push(super::relay::RelaySummary {
                    track: t.id.clone(),
                    to: r.to.0,
                    layers,
                    packets: r.packets,
                });
            }
        }
        out
    }

    /// Remote members, in the order they became known.
    pub fn remotes(&self) -> impl Iterator<Item = (&ParticipantKey, &Remote)> {
        self.remote_order
            .iter()
            .filter_map(|k| self.remotes.get_key_value(k))
    }

    /// Tells the other copies `fact` (a room without copies outputs nothing).
    pub(super) fn tell(&mut self, fact: Fact) {
        if self.copied {
            self.out(Output::Fact(fact));
        }
    }

    /// Tells the other copies about a local track, as it is now.
    pub(super) fn tell_track(&mut self, track: TrackKey) {
        if !self.copied {
            return;
        }
        let Some(t) = self.tracks.get(track.0) else {
            return;
        };
        if t.relayed_from.is_some() {
            return;
        }
        let Some(m) = self.members.get(&t.owner) else {
            return;
        };
        if m.grants.hidden {
            return;
        }
        let fact = Fact::Track(t.relayed(&m.id));
        self.out(Output::Fact(fact));
    }

    /// What a new copy must know of this one: its visible participants and their tracks.
    pub fn snapshot(&self) -> Vec<Fact> {
        let mut facts = Vec::new();
        for k in &self.order {
            let Some(m) = self.members.get(k) else {
                continue;
            };
            if m.grants.hidden {
                continue;
            }
            if let Some(info) = self.participant_info(*k) {
                facts.push(Fact::Joined(ParticipantInfo {
                    tracks: Vec::new(),
                    ..info
                }));
            }
            for t in &m.tracks {
                if let Some(t) = self.tracks.get(t.0) {
                    facts.push(Fact::Track(t.relayed(&m.id)));
                }
            }
        }
        let history: Vec<_> = self.chat.replay().collect();
        if !history.is_empty() {
            facts.push(Fact::History(history));
        }
        facts
    }

    /// A fact from the copy at `from`. Returns a reply to send back to it, if any (the
    /// snapshot, for [`Fact::Hello`]).
    pub fn fact(&mut self, _now: Instant, from: RelayKey, fact: Fact) -> Vec<Fact> {
        self.copied = true;
        match fact {
            Fact::Hello => {
                let mut facts = self.snapshot();
                facts.push(Fact::SnapshotEnd);
                return facts;
            }
            Fact::SnapshotEnd => match self.syncing {
                Some((n, until)) if n > 1 => self.syncing = Some((n - 1, until)),
                Some(_) => self.synced(),
                None => {}
            },
            Fact::Joined(info) => {
                if self.remote_ids.contains_key(&info.id) {
                    return Vec::new();
                }
                let key = ParticipantKey(REMOTE_KEYS + self.next_remote);
                self.next_remote += 1;
                self.remote_ids.insert(info.id.clone(), key);
                self.remote_order.push(key);
                self.remotes.insert(
                    key,
                    Remote {
                        info: ParticipantInfo {
                            tracks: Vec::new(),
                            ..info.clone()
                        },
                        home: from,
                        tracks: Vec::new(),
                    },
                );
                self.broadcast(
                    None,
                    ServerMessage::ParticipantJoined {
                        participant: ParticipantInfo {
                            tracks: Vec::new(),
                            ..info
                        },
                    },
                );
            }
            Fact::Left(id) => self.remote_left(&id),
            // Only a copy still waiting for its first joiners' `joined` takes a history
            // (later, the messages come one by one as [`Fact::Chat`]).
            Fact::History(messages) => {
                if self.syncing.is_some() {
                    self.chat.merge(messages);
                }
            }
            Fact::Track(rt) => self.relayed_track(from, rt),
            Fact::TrackGone(track) => {
                let Some(key) = self.track_key(&track) else {
                    return Vec::new();
                };
                let Some(owner) = self.tracks.get(key.0).map(|t| t.owner) else {
                    return Vec::new();
                };
                let Some(r) = self.remotes.get_mut(&owner) else {
                    return Vec::new();
                };
                r.tracks.retain(|t| *t != key);
                self.remove_track(key);
                self.announce_remote(owner);
            }
            Fact::SenderReport {
                track,
                ssrc,
                ntp,
                rtp_ts,
            } => {
                if !self.taps.is_empty() && self.track_key(&track).is_some() {
                    self.report_to_taps(track, ssrc, ntp, rtp_ts);
                }
            }
            Fact::Hand {
                participant,
                raised,
            } => {
                self.set_hand(&participant, raised);
            }
            Fact::Reaction { from, emoji } => {
                if self.remote_ids.contains_key(&from) {
                    self.reaction(from, emoji);
                }
            }
            Fact::Chat {
                from: who,
                name,
                text,
                unix_ms,
            } => {
                let msg = self.chat.push(who, name, text, unix_ms);
                let Ok(json) = serde_json::to_string(&msg) else {
                    return Vec::new();
                };
                let json: Arc<str> = json.into();
                for i in 0..self.order.len() {
                    let to = self.order[i];
                    self.out(Output::Chat {
                        to,
                        json: json.clone(),
                    });
                }
            }
        }
        Vec::new()
    }

    /// The copy at `from` is gone (its worker stopped, or the room emptied there): its
    /// participants leave this copy's view, nothing is relayed there any more.
    pub fn copy_gone(&mut self, from: RelayKey) {
        let gone: Vec<ParticipantId> = self
            .remotes
            .values()
            .filter(|r| r.home == from)
            .map(|r| r.info.id.clone())
            .collect();
        for id in gone {
            self.remote_left(&id);
        }
        self.relay_gone(from);
    }

    fn remote_left(&mut self, id: &ParticipantId) {
        let Some(key) = self.remote_ids.remove(id) else {
            return;
        };
        self.remote_order.retain(|k| *k != key);
        self.speakers.remove(&key);
        if let Some(r) = self.remotes.remove(&key) {
            for t in r.tracks {
                self.remove_track(t);
            }
        }
        self.broadcast(
            None,
            ServerMessage::ParticipantLeft {
                participant_id: id.clone(),
            },
        );
    }

    pub(super) fn announce_remote(&mut self, key: ParticipantKey) {
        if let Some(info) = self.remote_info(key) {
            self.broadcast(
                None,
                ServerMessage::ParticipantUpdated { participant: info },
            );
        }
    }

    /// A track of a remote member, new or changed: re-published here as a relayed copy
    /// (its layers and mute state follow the home's).
    fn relayed_track(&mut self, from: RelayKey, rt: RelayedTrack) {
        let Some(owner) = self.remote_ids.get(&rt.owner).copied() else {
            return;
        };
        if let Some(key) = self.track_key(&rt.info.id) {
            let Some(t) = self.tracks.get_mut(key.0) else {
                return;
            };
            for (_, rid, ssrc) in &rt.layers {
                t.add_layer(rid.clone(), *ssrc);
            }
            let changed = t.muted != rt.info.muted;
            t.muted = rt.info.muted;
            if changed {
                self.announce_remote(owner);
            }
            return;
        }
        let mut t = PublishedTrack::new(
            rt.info.id.clone(),
            owner,
            rt.info.kind,
            rt.info.source,
            rt.codec,
            PeerKey(u64::MAX),
            String::new(),
            None,
            Duration::from_millis(self.config.keyframe_interval_ms),
        );
        // The home's negotiated rids place each layer where the home has it, so that a
        // layer index (in wants and keyframe requests) means the same on both sides.
        t.rids = rt.rids;
        for (_, rid, ssrc) in rt.layers {
            t.add_layer(rid, ssrc);
        }
        t.audio_level_ext = rt.audio_level_ext;
        t.muted = rt.info.muted;
        t.relayed_from = Some((from, WantsAnnouncer::default()));
        let id = t.id.clone();
        if let Some((who, name)) = self.who(owner) {
            // A recording here takes the relayed tracks too.
            let meta = t.meta(&self.id, &who, &name);
            self.taps
                .retain(|tap| tap.send(crate::sink::TapEvent::TrackStarted(meta.clone())));
        }
        let key = TrackKey(self.tracks.insert(t));
        self.track_ids.insert(id, key);
        SfuStats::gauge(&self.stats.published_tracks, 1);
        if let Some(r) = self.remotes.get_mut(&owner) {
            r.tracks.push(key);
        }
        for i in 0..self.order.len() {
            let k = self.order[i];
            self.subscribe(k, key);
        }
        self.announce_remote(owner);
    }
}
