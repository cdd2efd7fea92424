//! A published track (producer), its received layers, and its down-tracks (consumers),
//! with the per-packet fan-out. Pure data and decisions.

use super::relay::{RelayKey, RelayOut, WantsAnnouncer};
use crate::allocator::MAX_LAYERS;
use crate::bwe::RateMeter;
use crate::forwarder::{Decision, DropReason, Forward, Forwarder, PacketInfo};
use crate::keyframe::KeyframeThrottle;
use crate::keys::{ParticipantKey, PeerKey};
use crate::peer::TrackCodec;
use crate::rtp::SeqTracker;
use confab_proto::{MediaKind, RoomId, TrackId, TrackInfo, TrackSource};
use rustc_hash::FxHashMap;
use std::time::{Duration, Instant};

/// A track a participant publishes.
pub struct PublishedTrack {
    pub id: TrackId,
    pub owner: ParticipantKey,
    pub kind: MediaKind,
    pub source: TrackSource,
    pub muted: bool,
    /// Muted by an administrator: not forwarded to anyone.
    pub admin_muted: bool,
    pub codec: TrackCodec,
    /// The publisher connection, its rtc track id and transceiver mid.
    pub pub_peer: PeerKey,
    pub rtc_id: String,
    pub mid: Option<String>,
    /// Received layers, indexed lowest first. A non-simulcast track has one, without rid.
    pub layers: Vec<Option<LayerIn>>,
    /// The simulcast rids the publisher's offer negotiated for this track, by layer: the
    /// publisher's layer set, including layers that have not arrived (yet).
    pub rids: [Option<String>; MAX_LAYERS],
    /// The negotiated id of the RFC 6464 audio-level extension, for audio tracks.
    pub audio_level_ext: Option<u8>,
    /// Dynacast: the rids last announced to the publisher as wanted, and when each layer
    /// was last wanted.
    pub announced_rids: Option<Vec<String>>,
    pub wanted_at: [Option<Instant>; MAX_LAYERS],
    /// Down-tracks, and where each subscriber's is in `down` (the fan-out walks a dense
    /// vector; allocation finds a subscriber's in O(1)).
    pub down: Vec<DownTrack>,
    down_at: FxHashMap<ParticipantKey, usize>,
    /// Relays: copies of this track to room copies elsewhere ([`super::relay`]).
    pub relays: Vec<RelayOut>,
    /// Set when this track is itself a relayed copy: the home it comes from (keyframe
    /// requests and layer wants go there, not to a publisher connection), and when its
    /// wants were last told.
    pub relayed_from: Option<(RelayKey, WantsAnnouncer)>,
    keyframe_interval: Duration,
}

/// One received encoding (simulcast layer) of a track.
pub struct LayerIn {
    pub rid: Option<String>,
    pub ssrc: u32,
    pub seq: SeqTracker,
    pub keyframes: KeyframeThrottle,
    pub rate: RateMeter,
    /// Frame height, from the last keyframe.
    pub height: Option<u32>,
}

/// One subscriber's copy of a published track.
pub struct DownTrack {
    pub subscriber: ParticipantKey,
    pub sub_peer: PeerKey,
    /// Index of the sender slot in the subscriber connection.
    pub slot: usize,
    pub forwarder: Forwarder,
    /// Negotiated and connected: allocation may turn it on.
    pub ready: bool,
}

/// Where a simulcast rid sits in the layer order. Browsers' and libraries' usual names
/// first; anything else takes the next free place.
pub fn layer_of_rid(rid: &str) -> Option<usize> {
    match rid {
        "q" | "l" | "low" | "0" | "r0" => Some(0),
        "h" | "m" | "mid" | "medium" | "1" | "r1" => Some(1),
        "f" | "high" | "full" | "2" | "r2" => Some(2),
        _ => None,
    }
}

/// Places negotiated rids (lowest layer first, as offered) on layers: the usual names where
/// they say, the others in offer order on the places left. More than [`MAX_LAYERS`] rids:
/// the extra ones get no layer.
pub fn rid_layers(rids: &[String]) -> [Option<String>; MAX_LAYERS] {
    let mut out: [Option<String>; MAX_LAYERS] = Default::default();
    let mut rest = Vec::new();
    for r in rids {
        match layer_of_rid(r) {
            Some(i) if out[i].is_none() => out[i] = Some(r.clone()),
            _ => rest.push(r),
        }
    }
    for r in rest {
        if let Some(free) = out.iter_mut().find(|s| s.is_none()) {
            *free = Some(r.clone());
        }
    }
    out
}

/// Where one copy of an incoming packet goes ([`PublishedTrack::fan_out`]).
pub enum Emit<'a> {
    /// To a subscriber's down-track, rewritten so.
    Down(&'a DownTrack, Forward),
    /// Unchanged, to a room copy.
    Relay(RelayKey),
}

/// Counts of what happened to one incoming packet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    pub forwarded: u32,
    pub dropped: u32,
}

impl PublishedTrack {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: TrackId,
        owner: ParticipantKey,
        kind: MediaKind,
        source: TrackSource,
        codec: TrackCodec,
        pub_peer: PeerKey,
        rtc_id: String,
        mid: Option<String>,
        keyframe_interval: Duration,
    ) -> Self {
        Self {
            id,
            owner,
            kind,
            source,
            muted: false,
            admin_muted: false,
            codec,
            pub_peer,
            rtc_id,
            mid,
            layers: Vec::new(),
            rids: Default::default(),
            audio_level_ext: None,
            announced_rids: None,
            wanted_at: [None; MAX_LAYERS],
            down: Vec::new(),
            down_at: FxHashMap::default(),
            relays: Vec::new(),
            relayed_from: None,
            keyframe_interval,
        }
    }

    /// The publisher's negotiated rids for this track, lowest first (see [`rid_layers`]).
    pub fn set_negotiated_rids(&mut self, rids: &[String]) {
        self.rids = rid_layers(rids);
    }

    /// How many layers the track has: negotiated or received, whichever says more.
    pub fn layer_count(&self) -> usize {
        let negotiated = self
            .rids
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i + 1);
        negotiated.max(self.layers.len()).max(1)
    }

    /// Records a received encoding; returns its layer index. Idempotent.
    pub fn add_layer(&mut self, rid: Option<String>, ssrc: u32) -> usize {
        if let Some(i) = self.layer_of_ssrc(ssrc) {
            return i;
        }
        let negotiated = rid
            .as_deref()
            .and_then(|r| self.rids.iter().position(|n| n.as_deref() == Some(r)));
        let at = negotiated
            .or_else(|| rid.as_deref().and_then(layer_of_rid))
            .filter(|i| self.layers.get(*i).is_none_or(Option::is_none))
            .or_else(|| (0..MAX_LAYERS).find(|i| self.layers.get(*i).is_none_or(Option::is_none)))
            .unwrap_or(MAX_LAYERS - 1);
        if self.layers.len() <= at {
            self.layers.resize_with(at + 1, || None);
        }
        self.layers[at] = Some(LayerIn {
            rid,
            ssrc,
            seq: SeqTracker::new(),
            keyframes: KeyframeThrottle::new(self.keyframe_interval),
            rate: RateMeter::default(),
            height: None,
        });
        at
    }

    pub fn layer_of_ssrc(&self, ssrc: u32) -> Option<usize> {
        self.layers
            .iter()
            .position(|l| l.as_ref().is_some_and(|l| l.ssrc == ssrc))
    }

    pub fn layer(&mut self, i: usize) -> Option<&mut LayerIn> {
        self.layers.get_mut(i).and_then(Option::as_mut)
    }

    pub fn simulcast(&self) -> bool {
        self.rids.iter().any(Option::is_some)
            || self.layers.iter().flatten().any(|l| l.rid.is_some())
    }

    /// Dynacast: the negotiated rids someone wants (a layer wanted within `grace` of `now`),
    /// in layer order. Only rids the publisher negotiated are listed, whether they arrived
    /// yet or not (a layer that starts late must not be paused before it could be wanted).
    /// The lowest negotiated layer stays on while any down-track is active, so that a
    /// switch down always has somewhere to land; the highest while `recorded` (a recording
    /// takes the best layer).
    pub fn dynacast_rids(&self, now: Instant, grace: Duration, recorded: bool) -> Vec<String> {
        let lowest = self.rids.iter().position(Option::is_some);
        let top = self.rids.iter().rposition(Option::is_some);
        let anyone = self.down.iter().any(|d| d.ready && d.forwarder.is_active())
            || self.relays.iter().any(|r| r.wants_any(now));
        self.rids
            .iter()
            .enumerate()
            .filter_map(|(i, rid)| {
                let rid = rid.as_ref()?;
                let wanted = self.wanted_at[i]
                    .is_some_and(|w| now.saturating_duration_since(w) < grace)
                    || self.relays.iter().any(|r| r.wants(i as u8, now));
                let keep = (anyone && Some(i) == lowest) || (recorded && Some(i) == top);
                (wanted || keep).then(|| rid.clone())
            })
            .collect()
    }

    /// Recent bitrate per layer (0 = not received lately).
    pub fn layer_rates(&self, now: Instant) -> [u64; MAX_LAYERS] {
        let mut r = [0; MAX_LAYERS];
        for (i, l) in self.layers.iter().enumerate().take(MAX_LAYERS) {
            if let Some(l) = l {
                r[i] = l.rate.rate_bps(now);
            }
        }
        r
    }

    pub fn layer_heights(&self) -> [Option<u32>; MAX_LAYERS] {
        let mut h = [None; MAX_LAYERS];
        for (i, l) in self.layers.iter().enumerate().take(MAX_LAYERS) {
            h[i] = l.as_ref().and_then(|l| l.height);
        }
        h
    }

    /// What a recording sink is told of this track.
    pub fn meta(
        &self,
        room: &RoomId,
        participant: &confab_proto::ParticipantId,
        name: &confab_proto::DisplayName,
    ) -> crate::sink::TrackMeta {
        crate::sink::TrackMeta {
            room: room.clone(),
            participant: participant.clone(),
            participant_name: name.clone(),
            track: self.id.clone(),
            kind: self.kind,
            source: self.source,
            codec: self.codec.codec,
            mime: self.codec.rtp.mime_type.clone(),
            clock_rate: self.codec.rtp.clock_rate,
            channels: self.codec.rtp.channels,
            payload_type: self.codec.payload_type,
        }
    }

    /// The layers this room's subscribers want (bit i = layer i; a relay's wants merged
    /// in): what a relayed copy asks its home for. A layer is wanted when the allocation
    /// wanted it within `grace`; the lowest received layer, or layer 0 of a track without
    /// layers (audio), while any down-track is active.
    pub fn wanted_layers(&self, now: Instant, grace: Duration) -> u8 {
        let mut mask = 0u8;
        for (i, w) in self.wanted_at.iter().enumerate() {
            if w.is_some_and(|w| now.saturating_duration_since(w) < grace) {
                mask |= 1 << i;
            }
        }
        for r in &self.relays {
            for l in 0..MAX_LAYERS as u8 {
                if r.wants(l, now) {
                    mask |= 1 << l;
                }
            }
        }
        if self.down.iter().any(|d| d.ready && d.forwarder.is_active()) {
            let lowest = self.layers.iter().position(Option::is_some).unwrap_or(0);
            mask |= 1 << lowest;
        }
        mask
    }

    /// A room copy at `to` wants the layers of `mask` (bit i = layer i): the relay is
    /// created if new. Returns whether it was.
    pub fn relay_wants(&mut self, to: RelayKey, mask: u8, now: Instant) -> bool {
        match self.relays.iter_mut().find(|r| r.to == to) {
            Some(r) => {
                r.set_wants(mask, now);
                false
            }
            None => {
                let mut r = RelayOut::new(to);
                r.set_wants(mask, now);
                self.relays.push(r);
                true
            }
        }
    }

    /// Drops the relay to `to` (its link is gone, or it wants nothing); returns it.
    pub fn remove_relay(&mut self, to: RelayKey) -> Option<RelayOut> {
        let i = self.relays.iter().position(|r| r.to == to)?;
        Some(self.relays.swap_remove(i))
    }

    pub fn info(&self) -> TrackInfo {
        TrackInfo {
            id: self.id.clone(),
            kind: self.kind,
            source: self.source,
            muted: self.muted,
            simulcast: self.simulcast(),
        }
    }

    pub fn add_down(&mut self, subscriber: ParticipantKey, sub_peer: PeerKey, slot: usize) {
        if self.down_at.contains_key(&subscriber) {
            return;
        }
        self.down_at.insert(subscriber, self.down.len());
        self.down.push(DownTrack {
            subscriber,
            sub_peer,
            slot,
            forwarder: Forwarder::new(self.codec.codec),
            ready: false,
        });
    }

    /// Removes the down-track of `subscriber`, returning it.
    pub fn remove_down(&mut self, subscriber: ParticipantKey) -> Option<DownTrack> {
        let i = self.down_at.remove(&subscriber)?;
        let d = self.down.swap_remove(i);
        if let Some(moved) = self.down.get(i) {
            self.down_at.insert(moved.subscriber, i);
        }
        Some(d)
    }

    pub fn down_of(&self, subscriber: ParticipantKey) -> Option<&DownTrack> {
        self.down.get(*self.down_at.get(&subscriber)?)
    }

    pub fn down_of_mut(&mut self, subscriber: ParticipantKey) -> Option<&mut DownTrack> {
        self.down.get_mut(*self.down_at.get(&subscriber)?)
    }

    /// The layers some down-track waits for a keyframe of.
    pub fn wanted_keyframes(&self) -> impl Iterator<Item = u8> + '_ {
        self.down
            .iter()
            .filter_map(|d| d.forwarder.needs_keyframe())
    }

    /// Runs one incoming packet through every relay and every down-track's forwarder;
    /// `emit` is called for each relay whose copy wants its layer (first: the copy fans
    /// out in parallel), and for each down-track that forwards it, with the rewritten
    /// numbering.
    pub fn fan_out(
        &mut self,
        info: &PacketInfo,
        now: Instant,
        mut emit: impl FnMut(Emit<'_>),
    ) -> Fanout {
        let mut f = Fanout::default();
        // Relays first: the copy elsewhere fans out in parallel with this one.
        for r in &mut self.relays {
            if r.wants(info.layer, now) {
                r.packets += 1;
                f.forwarded += 1;
                emit(Emit::Relay(r.to));
            }
        }
        for d in &mut self.down {
            match d.forwarder.on_packet(info, now) {
                Decision::Forward(rw) => {
                    f.forwarded += 1;
                    emit(Emit::Down(d, rw));
                }
                Decision::Drop(DropReason::Paused) => {}
                Decision::Drop(_) => f.dropped += 1,
            }
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::Codec;
    use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;

    fn track(codec: Codec) -> PublishedTrack {
        PublishedTrack::new(
            TrackId::from_suffix("t"),
            ParticipantKey(1),
            MediaKind::Video,
            TrackSource::Camera,
            TrackCodec {
                codec,
                rtp: RTCRtpCodec::default(),
                payload_type: 96,
            },
            PeerKey(10),
            "rtc".into(),
            None,
            Duration::from_millis(500),
        )
    }

    #[test]
    fn layers_by_rid_and_ssrc() {
        let mut t = track(Codec::Vp8);
        assert_eq!(t.add_layer(Some("f".into()), 30), 2);
        assert_eq!(t.add_layer(Some("q".into()), 10), 0);
        assert_eq!(t.add_layer(Some("q".into()), 10), 0, "idempotent");
        assert_eq!(t.add_layer(Some("weird".into()), 20), 1, "next free place");
        assert_eq!(t.layer_of_ssrc(20), Some(1));
        assert_eq!(t.layer_of_ssrc(99), None);
        assert!(t.simulcast());
        let mut single = track(Codec::Vp8);
        assert_eq!(single.add_layer(None, 5), 0);
        assert!(!single.simulcast());
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn negotiated_rids_are_placed_on_layers() {
        let cases: &[(&[&str], [Option<&str>; MAX_LAYERS])] = &[
            (&["q", "h", "f"], [Some("q"), Some("h"), Some("f")]),
            // Usual names win over the offer order.
            (&["f", "q", "h"], [Some("q"), Some("h"), Some("f")]),
            // Two encodings: the names say which places.
            (&["q", "f"], [Some("q"), None, Some("f")]),
            (&["h", "f"], [None, Some("h"), Some("f")]),
            // Other names: offer order, lowest first.
            (&["a", "b", "c"], [Some("a"), Some("b"), Some("c")]),
            (&["x", "f", "y"], [Some("x"), Some("y"), Some("f")]),
            (&["lo", "hi"], [Some("lo"), Some("hi"), None]),
            // Too many: the extra one has no place; a repeated usual name takes a free one.
            (&["a", "b", "c", "d"], [Some("a"), Some("b"), Some("c")]),
            (&["q", "low"], [Some("q"), Some("low"), None]),
            (&[], [None, None, None]),
        ];
        for (rids, want) in cases {
            let got = rid_layers(&strings(rids));
            assert_eq!(got, want.map(|w| w.map(String::from)), "{rids:?}");
        }
    }

    #[test]
    fn layers_follow_the_negotiated_rids() {
        let mut t = track(Codec::Vp8);
        assert_eq!(t.layer_count(), 1);
        t.set_negotiated_rids(&strings(&["a", "b", "c"]));
        assert!(t.simulcast(), "negotiated, before any packet");
        assert_eq!(t.layer_count(), 3, "the layers not received yet count");
        // The top layer arrives first: it takes its own place, not the first free one.
        assert_eq!(t.add_layer(Some("c".into()), 30), 2);
        assert_eq!(t.add_layer(Some("a".into()), 10), 0);
        assert_eq!(t.add_layer(Some("b".into()), 20), 1);
        assert_eq!(t.layer_count(), 3);
    }

    #[test]
    fn dynacast_lists_wanted_negotiated_rids() {
        let now = Instant::now();
        let grace = Duration::from_secs(2);
        let mut t = track(Codec::Vp8);
        t.set_negotiated_rids(&strings(&["q", "h", "f"]));
        // Only q and h arrived; a stray rid the offer did not negotiate too.
        t.add_layer(Some("q".into()), 10);
        t.add_layer(Some("h".into()), 20);
        assert_eq!(t.dynacast_rids(now, grace, false), Vec::<String>::new());
        // Wanted up to the top: f is listed though nothing of it arrived yet.
        t.wanted_at = [Some(now); MAX_LAYERS];
        assert_eq!(t.dynacast_rids(now, grace, false), ["q", "h", "f"]);
        // Wants expire after the grace period.
        t.wanted_at = [Some(now), Some(now - grace), None];
        assert_eq!(t.dynacast_rids(now, grace, false), ["q"]);
        // Recorded: the top negotiated layer stays on, received or not.
        t.wanted_at = [None; MAX_LAYERS];
        assert_eq!(t.dynacast_rids(now, grace, true), ["f"]);
        // An active down-track keeps the lowest negotiated layer on.
        t.set_negotiated_rids(&strings(&["h", "f"]));
        t.add_down(ParticipantKey(2), PeerKey(20), 0);
        let d = t.down_of_mut(ParticipantKey(2)).unwrap();
        d.ready = true;
        d.forwarder.set_active(true);
        assert_eq!(t.dynacast_rids(now, grace, false), ["h"]);
        // A rid that was received but not negotiated is never listed.
        let mut odd = track(Codec::Vp8);
        odd.set_negotiated_rids(&strings(&["q"]));
        odd.add_layer(Some("x".into()), 99);
        odd.wanted_at = [Some(now); MAX_LAYERS];
        assert_eq!(odd.dynacast_rids(now, grace, false), ["q"]);
    }

    #[test]
    fn fan_out_reaches_active_down_tracks_only() {
        let now = Instant::now();
        let mut t = track(Codec::Vp8);
        let k = ParticipantKey;
        t.add_down(k(2), PeerKey(20), 0);
        t.add_down(k(3), PeerKey(30), 0);
        t.add_down(k(4), PeerKey(40), 1);
        t.down_of_mut(k(2)).unwrap().forwarder.set_active(true);
        t.down_of_mut(k(4)).unwrap().forwarder.set_active(true);
        assert_eq!(t.wanted_keyframes().collect::<Vec<_>>(), vec![0, 0]);
        let key = PacketInfo {
            layer: 0,
            ext_seq: 100,
            ts: 0,
            keyframe: true,
            padding_only: false,
            vp8: None,
        };
        let mut got = vec![];
        let f = t.fan_out(&key, now, |e| {
            if let Emit::Down(d, rw) = e {
                got.push((d.subscriber, rw.seq))
            }
        });
        assert_eq!(got, vec![(k(2), 100), (k(4), 100)]);
        assert_eq!(
            f,
            Fanout {
                forwarded: 2,
                dropped: 0
            }
        );
        assert_eq!(t.wanted_keyframes().count(), 0);
        assert!(t.remove_down(k(2)).is_some());
        assert!(t.remove_down(k(2)).is_none());
        assert_eq!(
            t.down_of(k(4)).map(|d| d.slot),
            Some(1),
            "the index follows the move"
        );
        let mut got = vec![];
        t.fan_out(
            &PacketInfo {
                ext_seq: 101,
                keyframe: false,
                ..key
            },
            now,
            |e| {
                if let Emit::Down(d, _) = e {
                    got.push(d.subscriber)
                }
            },
        );
        assert_eq!(got, vec![k(4)]);
    }

    #[test]
    fn a_relayed_copy_keeps_each_subscriber_continuous_across_switches() {
        use crate::forwarder::Vp8Fields;
        let t0 = Instant::now();
        let to = RelayKey(9);
        // The home's track, and its copy elsewhere with one subscriber.
        let mut home = track(Codec::Vp8);
        let mut copy = track(Codec::Vp8);
        copy.relayed_from = Some((to, WantsAnnouncer::default()));
        for (l, rid) in ["q", "h", "f"].iter().enumerate() {
            home.add_layer(Some(rid.to_string()), 10 + l as u32);
            copy.add_layer(Some(rid.to_string()), 10 + l as u32);
        }
        let sub = ParticipantKey(5);
        copy.add_down(sub, PeerKey(50), 0);
        let d = copy.down_of_mut(sub).unwrap();
        d.ready = true;
        d.forwarder.set_active(true);
        let grace = Duration::from_secs(2);
        // What the subscriber received: (seq, picture id), and which layers crossed.
        let mut got: Vec<(u16, u16)> = Vec::new();
        let mut crossed = [0u32; MAX_LAYERS];
        let mut target = 0u8;
        let mut now = t0;
        for step in 0..120u64 {
            now += Duration::from_millis(33);
            // The copy's allocation: the subscriber's target, wanted up to it.
            target = match step {
                40 => 2,
                80 => 1,
                _ => target,
            };
            copy.down_of_mut(sub)
                .unwrap()
                .forwarder
                .set_target_layer(target);
            for w in copy.wanted_at.iter_mut().take(target as usize + 1) {
                *w = Some(now);
            }
            // Its wants travel upstream; the home relays those layers only.
            let mask = copy.wanted_layers(now, grace);
            home.relay_wants(to, mask, now);
            for layer in 0..3u8 {
                // Each layer: its own numbering; a keyframe every 10th frame, offset per layer.
                let info = PacketInfo {
                    layer,
                    ext_seq: 1000 * (layer as u64 + 1) + step,
                    ts: (step as u32) * 3000,
                    keyframe: (step + layer as u64).is_multiple_of(10),
                    padding_only: false,
                    vp8: Some(Vp8Fields {
                        picture_id: Some(((100 * (layer as u16 + 1) + step as u16), true)),
                        tl0picidx: None,
                    }),
                };
                let mut relayed = false;
                home.fan_out(&info, now, |e| {
                    relayed |= matches!(e, Emit::Relay(r) if r == to)
                });
                if !relayed {
                    continue;
                }
                crossed[layer as usize] += 1;
                // Relayed unchanged: the copy sees the same packet.
                copy.fan_out(&info, now, |e| {
                    if let Emit::Down(_, fw) = e {
                        let pid = fw
                            .vp8
                            .and_then(|v| v.picture_id)
                            .map(|(p, _)| p)
                            .or(info.vp8.and_then(|v| v.picture_id).map(|(p, _)| p))
                            .unwrap();
                        got.push((fw.seq, pid));
                    }
                });
            }
        }
        assert!(
            crossed[0] > 0 && crossed[1] > 0 && crossed[2] > 0,
            "{crossed:?}"
        );
        assert!(
            crossed[2] < 120 && crossed[1] < 120,
            "only wanted layers cross: {crossed:?}"
        );
        // The subscriber switched twice (0 -> 2 -> 1) and its numbering never jumped.
        assert_eq!(
            copy.down_of(sub).unwrap().forwarder.current_layer(),
            Some(1)
        );
        assert!(got.len() > 100, "{}", got.len());
        for w in got.windows(2) {
            assert_eq!(w[1].0, w[0].0.wrapping_add(1), "seq continuous: {w:?}");
            assert_eq!(w[1].1, w[0].1 + 1, "picture id continuous: {w:?}");
        }
    }

    #[test]
    fn relays_join_dynacast_and_expire() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(2);
        let mut t = track(Codec::Vp8);
        t.set_negotiated_rids(&strings(&["q", "h", "f"]));
        assert!(t.dynacast_rids(t0, grace, false).is_empty());
        // A copy wants the top layer only: the publisher keeps it (and the lowest).
        assert!(t.relay_wants(RelayKey(1), 0b100, t0), "created");
        assert!(!t.relay_wants(RelayKey(1), 0b100, t0), "known");
        assert_eq!(t.dynacast_rids(t0, grace, false), ["q", "f"]);
        let key = |layer| PacketInfo {
            layer,
            ext_seq: 1,
            ts: 0,
            keyframe: true,
            padding_only: false,
            vp8: None,
        };
        let count = |t: &mut PublishedTrack, layer, now| {
            let mut n = 0;
            t.fan_out(&key(layer), now, |e| {
                n += matches!(e, Emit::Relay(_)) as u32
            });
            n
        };
        assert_eq!(count(&mut t, 2, t0), 1);
        assert_eq!(count(&mut t, 0, t0), 0);
        // Not repeated: expired, and nothing crosses.
        let later = t0 + super::super::relay::WANTS_GRACE;
        assert_eq!(count(&mut t, 2, later), 0);
        assert!(t.dynacast_rids(later, grace, false).is_empty());
        assert!(t.remove_relay(RelayKey(1)).is_some());
        assert!(t.relays.is_empty());
    }
}
