//! Tracks opening and closing, the per-packet forwarding path, subscribers' feedback and
//! keyframe requests.

use super::relay::{RelayKey, Upstream};
use super::track::Emit;
use super::{Dest, Output, PublishedTrack, Room};
use crate::forwarder::{PacketInfo, Vp8Fields};
use crate::keys::{ParticipantKey, PeerKey, TrackKey};
use crate::peer::TrackCodec;
use crate::rtp::SeqResult;
use crate::rtp::codec::{Codec, Vp8Descriptor, Vp8Patch};
use crate::stats::SfuStats;
use confab_proto::{MediaKind, TrackId, TrackSource};
use std::time::{Duration, Instant};

/// A track (its first encoding) opened on a publisher connection.
#[derive(Debug, Clone)]
pub struct TrackOpen {
    /// The connection's id of the track, and the connection.
    pub rtc_id: String,
    pub pub_peer: PeerKey,
    pub ssrc: u32,
    pub rid: Option<String>,
    pub codec: TrackCodec,
    pub kind: MediaKind,
    pub mid: Option<String>,
    /// The negotiated id of the RFC 6464 audio-level extension.
    pub audio_level_ext: Option<u8>,
}

/// What a subscriber's RTCP says about one of its down-tracks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Feedback {
    /// It asked for a keyframe (PLI or FIR).
    pub keyframe: bool,
    /// The worst loss fraction (of 256) among its receiver reports, if it sent any.
    pub worst_loss: Option<u8>,
    /// What the subscriber's connection sent it lately (bits per second).
    pub egress_bps: u64,
}

impl Room {
    /// A publisher's track started: it becomes a down-track of every other member.
    /// Returns its key (the publisher connection routes the track's packets by it).
    pub fn track_opened(
        &mut self,
        now: Instant,
        owner: ParticipantKey,
        open: TrackOpen,
    ) -> Option<TrackKey> {
        let m = self.members.get_mut(&owner)?;
        let source = open
            .mid
            .as_ref()
            .and_then(|mid| m.sources.get(mid).copied())
            .unwrap_or(match open.kind {
                MediaKind::Audio => TrackSource::Microphone,
                MediaKind::Video => TrackSource::Camera,
            });
        let id = TrackId::from_suffix(format!("{}{}", self.track_prefix, self.next_track));
        self.next_track += 1;
        tracing::info!(participant = %m.id, track = %id, kind = ?open.kind, ?source, codec = %open.codec.rtp.mime_type, rid = ?open.rid, "track published");
        let mut t = PublishedTrack::new(
            id.clone(),
            owner,
            open.kind,
            source,
            open.codec,
            open.pub_peer,
            open.rtc_id,
            open.mid,
            Duration::from_millis(self.config.keyframe_interval_ms),
        );
        if let Some(rids) = t.mid.as_ref().and_then(|mid| m.offered_rids.get(mid)) {
            t.set_negotiated_rids(rids);
        }
        t.add_layer(open.rid, open.ssrc);
        t.audio_level_ext = open.audio_level_ext;
        let meta = t.meta(&self.id, &m.id, &m.name);
        let ev = crate::events::RoomEvent::TrackPublished {
            room: self.id.clone(),
            participant_id: m.id.clone(),
            track_id: id.clone(),
            kind: t.kind,
            source: t.source,
            codec: t.codec.rtp.mime_type.clone(),
        };
        let key = TrackKey(self.tracks.insert(t));
        m.tracks.push(key);
        self.track_ids.insert(id, key);
        self.taps
            .retain(|tap| tap.send(crate::sink::TapEvent::TrackStarted(meta.clone())));
        self.event(ev);
        SfuStats::gauge(&self.stats.published_tracks, 1);
        for i in 0..self.order.len() {
            let k = self.order[i];
            if k != owner {
                self.subscribe(k, key);
            }
        }
        let _ = now;
        self.announce_update(owner);
        Some(key)
    }

    /// One more simulcast layer of an open track arrived.
    pub fn layer_opened(&mut self, track: TrackKey, rid: Option<String>, ssrc: u32) {
        if let Some(t) = self.tracks.get_mut(track.0) {
            let layer = t.add_layer(rid, ssrc);
            tracing::debug!(track = %t.id, layer, ssrc, "simulcast layer opened");
            self.tell_track(track);
        }
    }

    /// A publisher's track ended.
    pub fn track_closed(&mut self, owner: ParticipantKey, track: TrackKey) {
        let Some(m) = self.members.get_mut(&owner) else {
            return;
        };
        let Some(i) = m.tracks.iter().position(|t| *t == track) else {
            return;
        };
        m.tracks.remove(i);
        if let Some(t) = self.tracks.get(track.0) {
            let id = t.id.clone();
            self.tell(super::copy::Fact::TrackGone(id));
        }
        self.remove_track(track);
        self.announce_update(owner);
    }

    /// Forgets a track and every down-track it fed (their subscribers renegotiate).
    pub(super) fn remove_track(&mut self, track: TrackKey) {
        if !self.tracks.contains(track.0) {
            return;
        }
        let t = self.tracks.remove(track.0);
        self.track_ids.remove(&t.id);
        SfuStats::gauge(&self.stats.published_tracks, -1);
        let id = t.id.clone();
        self.taps
            .retain(|tap| tap.send(crate::sink::TapEvent::TrackEnded(id.clone())));
        if let Some(owner) = self.members.get(&t.owner) {
            let ev = crate::events::RoomEvent::TrackUnpublished {
                room: self.id.clone(),
                participant_id: owner.id.clone(),
                track_id: t.id.clone(),
            };
            self.event(ev);
        }
        for d in t.down {
            SfuStats::gauge(&self.stats.down_tracks, -1);
            self.out(Output::CloseDownTrack {
                sub_peer: d.sub_peer,
                slot: d.slot,
            });
            if let Some(s) = self.members.get_mut(&d.subscriber) {
                s.free_slot(d.slot);
            }
            self.mark_dirty(d.subscriber);
        }
    }

    /// One RTP packet of a published track: accounted, handed to recording taps, and run
    /// through every down-track's forwarder and every relay. `write` sends one copy: a
    /// rewritten one to a subscriber connection's slot (its VP8 fields, when they change,
    /// as a patch to apply to the bytes sent), or the packet as received to a relay; it
    /// says whether the copy went out. Returns how many copies went out.
    pub fn forward(
        &mut self,
        now: Instant,
        track: TrackKey,
        pkt: rtc::rtp::Packet,
        mut write: impl FnMut(Dest<'_>, rtc::rtp::Packet, Option<Vp8Patch>) -> bool,
    ) -> u64 {
        let Some(t) = self.tracks.get_mut(track.0) else {
            return 0;
        };
        let Some(layer) = t.layer_of_ssrc(pkt.header.ssrc) else {
            // A layer whose open event has not been seen: nothing to route it by.
            SfuStats::inc(&self.stats.rtp_dropped);
            return 0;
        };
        let codec = t.codec.codec;
        let owner = t.owner;
        let audio_level_ext = t.audio_level_ext;
        let Some(l) = t.layer(layer) else { return 0 };
        let ext_seq = match l.seq.push(pkt.header.sequence_number) {
            SeqResult::New { ext, .. } => ext,
            SeqResult::Duplicate { .. } | SeqResult::TooOld => {
                SfuStats::inc(&self.stats.rtp_duplicates);
                return 0;
            }
        };
        l.rate.add(pkt.payload.len() + 12, now);
        let mut keyframe = false;
        let mut descriptor = None;
        if codec == Codec::Vp8 {
            // Parsed once: the keyframe bit, the frame size and the fields to rewrite.
            if let Some(d) = Vp8Descriptor::parse(&pkt.payload) {
                keyframe = d.is_keyframe;
                if d.is_keyframe
                    && let Some((_, h)) = crate::rtp::codec::vp8_dimensions(&pkt.payload[d.len..])
                {
                    l.height = Some(h as u32);
                }
                descriptor = Some(d);
            }
        } else if codec.is_video() {
            keyframe = codec.is_keyframe(&pkt.payload);
        }
        // Audio level for the speaker detector.
        if let Some(id) = audio_level_ext
            && let Some(ext) = pkt.header.get_extension(id)
            && let Some(level) = crate::speaker::audio_level(&ext)
        {
            self.speakers.level(&owner, level, now);
        }
        let Some(t) = self.tracks.get_mut(track.0) else {
            return 0;
        };
        if !self.taps.is_empty() {
            let ev = crate::sink::TapEvent::Rtp {
                track: t.id.clone(),
                layer: layer as u8,
                keyframe,
                packet: pkt.clone(),
                at: std::time::SystemTime::now(),
            };
            let stats = &self.stats;
            self.taps.retain(|tap| {
                let before = tap.dropped.load(std::sync::atomic::Ordering::Relaxed);
                let alive = tap.send(ev.clone());
                if tap.dropped.load(std::sync::atomic::Ordering::Relaxed) > before {
                    SfuStats::inc(&stats.recording_dropped);
                } else {
                    SfuStats::add(&stats.recording_bytes, pkt.payload.len() as u64);
                }
                alive
            });
        }
        let info = PacketInfo {
            layer: layer as u8,
            ext_seq,
            ts: pkt.header.timestamp,
            keyframe,
            padding_only: pkt.payload.is_empty(),
            vp8: descriptor.map(|d| Vp8Fields {
                picture_id: d.picture_id,
                tl0picidx: d.tl0picidx,
            }),
        };
        // A relay carries the packet as received, extensions included (the copy reads the
        // audio level from it); made only when there are relays.
        let relayed = (!t.relays.is_empty()).then(|| pkt.clone());
        // Extension ids are per leg: none of the publisher's mean anything downstream.
        // Stripped once here rather than per copy.
        let mut pkt = pkt;
        pkt.header.extension = false;
        pkt.header.extensions.clear();
        pkt.header.extensions_padding = 0;
        let mut written = 0u64;
        // Made only when there are relays, like the packet's clone.
        let track_id = relayed.as_ref().map(|_| t.id.clone());
        let fan = t.fan_out(&info, now, |e| match e {
            Emit::Down(d, fw) => {
                let mut out = pkt.clone();
                out.header.sequence_number = fw.seq;
                out.header.timestamp = fw.ts;
                let patch = fw
                    .vp8
                    .zip(descriptor.as_ref())
                    .map(|(v, desc)| Vp8Patch::new(desc, v.picture_id, v.tl0picidx));
                let to = Dest::Down {
                    sub_peer: d.sub_peer,
                    slot: d.slot,
                };
                if write(to, out, patch) {
                    written += 1;
                }
            }
            Emit::Relay(to) => {
                if let (Some(p), Some(track)) = (&relayed, &track_id)
                    && write(Dest::Relay { to, track }, p.clone(), None)
                {
                    written += 1;
                }
            }
        });
        SfuStats::add(&self.stats.rtp_out, written);
        SfuStats::add(&self.stats.rtp_dropped, fan.dropped as u64);
        written
    }

    /// Feedback from a subscriber about its down-track of `track` (the subscriber
    /// connection's track id is the room's track id): receiver reports feed its bandwidth
    /// estimate, keyframe requests go upstream.
    pub fn feedback(
        &mut self,
        now: Instant,
        subscriber: ParticipantKey,
        track: &TrackId,
        fb: Feedback,
    ) {
        if let Some(loss) = fb.worst_loss
            && let Some(m) = self.members.get_mut(&subscriber)
        {
            let before = m.bwe.estimate_bps();
            let after = m.bwe.on_report(loss, fb.egress_bps, now);
            self.estimate_moved(subscriber, before, after, now);
        }
        if !fb.keyframe {
            return;
        }
        SfuStats::inc(&self.stats.keyframe_requests_in);
        let Some(key) = self.track_key(track) else {
            return;
        };
        // The layer this subscriber currently receives.
        let layer = self
            .tracks
            .get(key.0)
            .and_then(|t| t.down_of(subscriber))
            .map(|d| {
                d.forwarder
                    .current_layer()
                    .unwrap_or(d.forwarder.target_layer())
            })
            .unwrap_or(0);
        self.request_keyframe(key, layer, now);
    }

    /// Transport-wide feedback from a subscriber, read ([`crate::twcc::CcSignal`]): its
    /// estimate follows; `egress_bps` is what its connection was sent lately.
    pub fn transport_feedback(
        &mut self,
        now: Instant,
        subscriber: ParticipantKey,
        signal: crate::twcc::CcSignal,
        egress_bps: u64,
    ) {
        let Some(m) = self.members.get_mut(&subscriber) else {
            return;
        };
        let before = m.bwe.estimate_bps();
        let after = m.bwe.on_transport_feedback(signal, egress_bps, now);
        tracing::trace!(
            subscriber = subscriber.0,
            overuse = signal.overuse,
            underuse = signal.underuse,
            received_bps = signal.received_bps,
            reported = signal.reported,
            lost = signal.lost,
            queue_us = signal.queue.as_micros() as u64,
            egress_bps,
            before,
            after,
            "transport feedback"
        );
        if signal.overuse && after < before {
            SfuStats::inc(&self.stats.bwe_overuse);
        }
        if let Some(outcome) = signal.probe {
            tracing::trace!(subscriber = subscriber.0, ?outcome, "probe");
            if matches!(outcome, crate::probe::Outcome::Carried(_)) {
                SfuStats::inc(&self.stats.bwe_probes_measured);
            }
            if after > before {
                // The path carried the probe: upgrade now, not at the next allocation.
                self.allocate(subscriber, now);
            }
        }
        self.estimate_moved(subscriber, before, after, now);
    }

    fn estimate_moved(
        &mut self,
        subscriber: ParticipantKey,
        before: u64,
        after: u64,
        now: Instant,
    ) {
        if after != before {
            tracing::trace!(
                subscriber = subscriber.0,
                before,
                after,
                "downlink estimate"
            );
        }
        if after < before {
            // Less room than thought: re-allocate at once.
            self.allocate(subscriber, now);
        }
    }

    /// A publisher's sender report maps an encoding's RTP clock to wall-clock time:
    /// recordings use it to date their files.
    pub fn sender_report(&mut self, pub_peer: PeerKey, ssrc: u32, ntp: u64, rtp_ts: u32) {
        if self.taps.is_empty() && !self.copied {
            return;
        }
        let Some(track) = self
            .tracks
            .iter()
            .find(|(_, t)| t.pub_peer == pub_peer && t.layer_of_ssrc(ssrc).is_some())
            .map(|(_, t)| t.id.clone())
        else {
            return;
        };
        // The other copies' recordings date the relayed track's files by it too.
        self.tell(super::copy::Fact::SenderReport {
            track: track.clone(),
            ssrc,
            ntp,
            rtp_ts,
        });
        self.report_to_taps(track, ssrc, ntp, rtp_ts);
    }

    pub(super) fn report_to_taps(&mut self, track: TrackId, ssrc: u32, ntp: u64, rtp_ts: u32) {
        let ev = crate::sink::TapEvent::SenderReport {
            track,
            ssrc,
            ntp,
            rtp_ts,
        };
        for tap in &self.taps {
            tap.send(ev.clone());
        }
    }

    /// A room copy at `to` wants the layers of `mask` (bit i = layer i) of `track`, which
    /// this room publishes: the track is relayed there from now on (0: no longer).
    pub fn relay_wants(&mut self, now: Instant, track: &TrackId, to: RelayKey, mask: u8) {
        let Some(key) = self.track_key(track) else {
            return;
        };
        let Some(t) = self.tracks.get_mut(key.0) else {
            return;
        };
        if mask == 0 {
            t.remove_relay(to);
        } else if t.relay_wants(to, mask, now) {
            tracing::debug!(track = %t.id, relay = to.0, mask, "relay opened");
        }
    }

    /// A room copy asks for a keyframe of `layer` of `track` (a subscriber there waits).
    pub fn relay_keyframe(&mut self, now: Instant, track: &TrackId, layer: u8) {
        if let Some(key) = self.track_key(track) {
            SfuStats::inc(&self.stats.keyframe_requests_in);
            self.request_keyframe(key, layer, now);
        }
    }

    /// The link to the room copy at `to` is gone: nothing is relayed there any more.
    pub fn relay_gone(&mut self, to: RelayKey) {
        for (_, t) in self.tracks.iter_mut() {
            t.remove_relay(to);
        }
    }

    /// Relayed copies: tells each home the layers this room's subscribers want of the
    /// tracks it relays here (on change, and repeated so the relay does not expire).
    pub(super) fn relay_upstream(&mut self, now: Instant, grace: Duration) {
        let mut msgs = Vec::new();
        let recorded = !self.taps.is_empty();
        for (_, t) in self.tracks.iter_mut() {
            let mut mask = t.wanted_layers(now, grace);
            if recorded {
                // A recording takes the best layer, watched here or not.
                let top = t
                    .rids
                    .iter()
                    .rposition(Option::is_some)
                    .or_else(|| t.layers.iter().rposition(Option::is_some))
                    .unwrap_or(0);
                mask |= 1 << top;
            }
            if let Some((from, announcer)) = t.relayed_from.as_mut()
                && let Some(layers) = announcer.poll(mask, now)
            {
                msgs.push(Output::Relay {
                    to: *from,
                    msg: Upstream::Wants {
                        track: t.id.clone(),
                        layers,
                    },
                });
            }
        }
        self.outputs.extend(msgs);
    }

    /// Asks the publisher of a video track for a keyframe of `layer` (or of the lowest
    /// received layer if that one is not there yet), within the keyframe throttle.
    /// A relayed copy asks its home instead.
    pub(super) fn request_keyframe(&mut self, track: TrackKey, layer: u8, now: Instant) {
        let Some(t) = self.tracks.get_mut(track.0) else {
            return;
        };
        if !t.codec.codec.is_video() {
            return;
        }
        let l = if t.layer(layer as usize).is_some() {
            layer as usize
        } else {
            match (0..t.layers.len()).find(|i| t.layers[*i].is_some()) {
                Some(i) => i,
                None => return,
            }
        };
        let relayed_from = t.relayed_from.as_ref().map(|(from, _)| *from);
        let track_id = relayed_from.map(|_| t.id.clone());
        let Some(layer) = t.layer(l) else { return };
        if !layer.keyframes.try_request(now) {
            return;
        }
        if let (Some(to), Some(track)) = (relayed_from, track_id) {
            // A relayed copy: the request goes to the track's home, which asks the
            // publisher (through its own throttle).
            SfuStats::inc(&self.stats.keyframe_requests_out);
            self.out(Output::Relay {
                to,
                msg: Upstream::Keyframe {
                    track,
                    layer: l as u8,
                },
            });
            return;
        }
        let ssrc = layer.ssrc;
        // Only a request that goes out allocates its rtc track id.
        let (pub_peer, rtc_id) = (t.pub_peer, t.rtc_id.clone());
        SfuStats::inc(&self.stats.keyframe_requests_out);
        self.out(Output::RequestKeyframe {
            pub_peer,
            rtc_id,
            ssrc,
        });
    }

    /// The rids each section (mid) of a publisher's accepted offer sends, lowest layer
    /// first: the layer set of its tracks, whether or not their layers arrived yet.
    pub fn publisher_rids(
        &mut self,
        owner: ParticipantKey,
        rids: std::collections::HashMap<String, Vec<String>>,
    ) {
        let Some(m) = self.members.get_mut(&owner) else {
            return;
        };
        for t in &m.tracks {
            if let Some(t) = self.tracks.get_mut(t.0)
                && let Some(r) = t.mid.as_ref().and_then(|mid| rids.get(mid))
                && !r.is_empty()
            {
                t.set_negotiated_rids(r);
            }
        }
        m.offered_rids = rids;
    }
}

/// Rewrites a VP8 payload's picture id and TL0PICIDX in a copy (the original is shared by
/// every other down-track). The forwarding path does not copy: it hands the down-track's
/// egress the [`Vp8Patch`], applied to the bytes being encrypted.
pub fn rewrite_vp8(payload: &bytes::Bytes, desc: &Vp8Descriptor, v: Vp8Fields) -> bytes::Bytes {
    let mut b = bytes::BytesMut::from(&payload[..]);
    Vp8Patch::new(desc, v.picture_id, v.tl0picidx).apply(&mut b);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_rewrite_in_place() {
        // X, S; I and L; 15-bit picture id 0x1234; TL0PICIDX 7; VP8 header; payload
        let p = bytes::Bytes::from_static(&[0x90, 0xC0, 0x92, 0x34, 0x07, 0x00, 0xAA]);
        let d = Vp8Descriptor::parse(&p).unwrap();
        let out = rewrite_vp8(
            &p,
            &d,
            Vp8Fields {
                picture_id: Some((0x0105, true)),
                tl0picidx: Some(9),
            },
        );
        let d2 = Vp8Descriptor::parse(&out).unwrap();
        assert_eq!(d2.picture_id, Some((0x0105, true)));
        assert_eq!(d2.tl0picidx, Some(9));
        assert_eq!(&out[5..], &p[5..], "the rest is untouched");
        assert_eq!(&p[2..4], &[0x92, 0x34], "the original is not modified");
    }
}
