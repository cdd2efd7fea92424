//! What the worker does with media: publication of tracks and their layers, forwarding,
//! keyframe requests, subscribers' feedback, and the periodic decisions on top of the pure
//! modules: layer allocation per subscriber (`allocator`, `bwe`), active speakers
//! (`speaker`), last-N, and dynacast.

use super::{Removal, Worker};
use crate::allocator::{self, Demand, PRIORITY_NORMAL, PRIORITY_SCREEN, PRIORITY_SPEAKER};
use crate::forwarder::{PacketInfo, Vp8Fields};
use crate::peer::{ParticipantKey, PeerKey, ReceivedTrack, TrackCodec};
use crate::room::PublishedTrack;
use crate::rtp::SeqResult;
use crate::rtp::codec::{Codec, Vp8Descriptor};
use crate::stats::SfuStats;
use confab_proto::{MediaKind, Quality, RoomId, ServerMessage, TrackId, TrackSource};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often allocation runs for every subscriber (it also runs on every change).
pub(super) const ALLOCATE_EVERY: Duration = Duration::from_millis(500);
/// A simulcast layer nobody wants is paused at the publisher after this long.
const DYNACAST_GRACE: Duration = Duration::from_secs(2);

/// A subscriber's wishes for one remote track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pref {
    pub subscribed: bool,
    pub quality: Quality,
    pub height: Option<u32>,
}

impl Default for Pref {
    fn default() -> Self {
        Self {
            subscribed: true,
            quality: Quality::High,
            height: None,
        }
    }
}

impl Worker {
    /// A publisher's track (or one more simulcast layer of it) started.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn track_opened(
        &mut self,
        peer_key: PeerKey,
        owner: ParticipantKey,
        rtc_id: String,
        receiver: rtc::rtp_transceiver::RTCRtpReceiverId,
        ssrc: u32,
        rid: Option<String>,
        codec: TrackCodec,
        kind: MediaKind,
        mid: Option<String>,
        audio_level_ext: Option<u8>,
    ) {
        let Some(p) = self.participants.get_mut(&owner) else {
            return;
        };
        let room_id = p.room.clone();
        // One more layer of a track already open.
        if let Some(track) = self
            .peers
            .get(&peer_key)
            .and_then(|peer| peer.received.get(&rtc_id))
            .map(|r| r.track.clone())
        {
            if let Some(t) = self
                .rooms
                .get_mut(&room_id)
                .and_then(|r| r.tracks.get_mut(&track))
            {
                let layer = t.add_layer(rid, ssrc);
                tracing::debug!(track = %track, layer, ssrc, "simulcast layer opened");
            }
            return;
        }
        let source = mid
            .as_ref()
            .and_then(|m| p.sources.get(m).copied())
            .unwrap_or(match kind {
                MediaKind::Audio => TrackSource::Microphone,
                MediaKind::Video => TrackSource::Camera,
            });
        let id = TrackId::from_suffix(format!("{}{}", self.index, self.next_track));
        self.next_track += 1;
        p.tracks.push(id.clone());
        tracing::info!(participant = %p.id, track = %id, ?kind, ?source, codec = %codec.rtp.mime_type, rid = ?rid, "track published");
        if let Some(peer) = self.peers.get_mut(&peer_key) {
            peer.received.insert(
                rtc_id.clone(),
                ReceivedTrack {
                    receiver,
                    track: id.clone(),
                    media_ssrc: ssrc,
                },
            );
        }
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        let mut t = PublishedTrack::new(
            id.clone(),
            owner,
            kind,
            source,
            codec,
            peer_key,
            rtc_id,
            mid,
            Duration::from_millis(self.config.keyframe_interval_ms),
        );
        if let Some(rids) = t
            .mid
            .as_ref()
            .and_then(|m| self.peers.get(&peer_key)?.offered_rids.get(m))
        {
            t.set_negotiated_rids(rids);
        }
        t.add_layer(rid, ssrc);
        t.audio_level_ext = audio_level_ext;
        if let Some(p) = self.participants.get(&owner) {
            let meta = t.meta(&room_id, &p.id, &p.name);
            room.taps
                .retain(|tap| tap.send(crate::sink::TapEvent::TrackStarted(meta.clone())));
            let ev = crate::events::RoomEvent::TrackPublished {
                room: room_id.clone(),
                participant_id: p.id.clone(),
                track_id: id.clone(),
                kind,
                source: t.source,
                codec: t.codec.rtp.mime_type.clone(),
            };
            room.tracks.insert(id.clone(), t);
            self.emit(ev);
        } else {
            room.tracks.insert(id.clone(), t);
        }
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        SfuStats::gauge(&self.stats.published_tracks, 1);
        let members: Vec<_> = room.members.clone();
        for m in members {
            if m != owner {
                self.subscribe(m, &room_id, &id);
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

    /// Marks the negotiated down-tracks of a connected subscriber ready and allocates:
    /// video starts at once (a keyframe is requested for it).
    pub(super) fn activate_down_tracks(&mut self, key: ParticipantKey, now: Instant) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let Some(peer) = self.peers.get(&p.sub) else {
            return;
        };
        if !peer.connected {
            return;
        }
        let negotiated: Vec<bool> = peer
            .senders
            .iter()
            .map(|s| s.as_ref().is_some_and(|s| s.payload_type.is_some()))
            .collect();
        let Some(room) = self.rooms.get_mut(&p.room) else {
            return;
        };
        for t in room.tracks.values_mut() {
            if let Some(d) = t.down_of(key) {
                d.ready = negotiated.get(d.slot).copied().unwrap_or(false);
            }
        }
        self.allocate(key, now);
    }

    pub(super) fn request_keyframe(
        &mut self,
        room: &RoomId,
        track: &TrackId,
        layer: u8,
        now: Instant,
    ) {
        let Some(t) = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.tracks.get_mut(track))
        else {
            return;
        };
        if !t.codec.codec.is_video() {
            return;
        }
        let (pub_peer, rtc_id) = (t.pub_peer, t.rtc_id.clone());
        // The wanted layer, or the lowest received if that one is not (yet) there.
        let wanted = t.layer(layer as usize).is_some();
        let l = if wanted {
            layer as usize
        } else {
            match (0..t.layers.len()).find(|i| t.layers[*i].is_some()) {
                Some(i) => i,
                None => return,
            }
        };
        let Some(l) = t.layer(l) else { return };
        if !l.keyframes.try_request(now) {
            return;
        }
        let ssrc = l.ssrc;
        if let Some(peer) = self.peers.get_mut(&pub_peer) {
            peer.send_pli(&rtc_id, ssrc, now);
            SfuStats::inc(&self.stats.keyframe_requests_out);
            self.mark_touched(pub_peer);
        }
    }

    pub(super) fn rtp(
        &mut self,
        peer_key: PeerKey,
        rtc_id: &str,
        pkt: rtc::rtp::Packet,
        now: Instant,
    ) {
        SfuStats::inc(&self.stats.rtp_in);
        let Some(peer) = self.peers.get(&peer_key) else {
            return;
        };
        let Some(rt) = peer.received.get(rtc_id) else {
            return;
        };
        let owner = peer.participant;
        let Some(room_id) = self.participants.get(&owner).map(|p| &p.room) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let Some(t) = room.tracks.get_mut(&rt.track) else {
            return;
        };
        let Some(layer) = t.layer_of_ssrc(pkt.header.ssrc) else {
            // A layer whose open event has not been seen: nothing to route it by.
            SfuStats::inc(&self.stats.rtp_dropped);
            return;
        };
        let codec = t.codec.codec;
        let Some(l) = t.layer(layer) else { return };
        let ext_seq = match l.seq.push(pkt.header.sequence_number) {
            SeqResult::New { ext, .. } => ext,
            SeqResult::Duplicate { .. } | SeqResult::TooOld => {
                SfuStats::inc(&self.stats.rtp_duplicates);
                return;
            }
        };
        l.rate.add(pkt.payload.len() + 12, now);
        let mut keyframe = codec.is_keyframe(&pkt.payload);
        let vp8 = if codec == Codec::Vp8 {
            Vp8Descriptor::parse(&pkt.payload).map(|d| {
                if d.is_keyframe
                    && let Some((_, h)) = crate::rtp::codec::vp8_dimensions(&pkt.payload[d.len..])
                {
                    l.height = Some(h as u32);
                }
                keyframe = d.is_keyframe;
                Vp8Fields {
                    picture_id: d.picture_id,
                    tl0picidx: d.tl0picidx,
                }
            })
        } else {
            None
        };
        // Audio level for the speaker detector.
        if let Some(id) = t.audio_level_ext
            && let Some(ext) = pkt.header.get_extension(id)
            && let Some(level) = crate::speaker::audio_level(&ext)
        {
            room.speakers.level(&owner, level, now);
        }
        let Some(t) = room.tracks.get_mut(&rt.track) else {
            return;
        };
        if !room.taps.is_empty() {
            let ev = crate::sink::TapEvent::Rtp {
                track: t.id.clone(),
                layer: layer as u8,
                keyframe,
                packet: pkt.clone(),
                at: std::time::SystemTime::now(),
            };
            let stats = &self.stats;
            room.taps.retain(|tap| {
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
        let Some(t) = room.tracks.get_mut(&rt.track) else {
            return;
        };
        let info = PacketInfo {
            layer: layer as u8,
            ext_seq,
            ts: pkt.header.timestamp,
            keyframe,
            padding_only: pkt.payload.is_empty(),
            vp8,
        };
        let descriptor = vp8.and(Vp8Descriptor::parse(&pkt.payload));
        // Extension ids are per leg: none of the publisher's mean anything downstream.
        // Stripped once here rather than per copy.
        let mut pkt = pkt;
        pkt.header.extension = false;
        pkt.header.extensions.clear();
        pkt.header.extensions_padding = 0;
        let peers = &mut self.peers;
        let touched = &mut self.touched;
        let touched_flag = &mut self.touched_flag;
        let mut written = 0u64;
        let fan = t.fan_out(&info, now, |d, fw| {
            let Some(sub) = peers.get_mut(&d.sub_peer) else {
                return;
            };
            let mut out = pkt.clone();
            out.header.sequence_number = fw.seq;
            out.header.timestamp = fw.ts;
            if let (Some(v), Some(desc)) = (fw.vp8, descriptor) {
                out.payload = rewrite_vp8(&out.payload, &desc, v);
            }
            let size = out.payload.len() + 12;
            if sub.write_rtp(d.slot, out, now) {
                sub.egress.add(size, now);
                written += 1;
                // Output only: forwarded RTP moves no protocol timer.
                if let std::collections::hash_map::Entry::Vacant(e) = touched_flag.entry(d.sub_peer)
                {
                    e.insert(false);
                    touched.push(d.sub_peer);
                }
            }
        });
        SfuStats::add(&self.stats.rtp_out, written);
        if written > 0 {
            self.forwarded += 1;
        }
        SfuStats::add(&self.stats.rtp_dropped, fan.dropped as u64);
    }

    /// Feedback from a subscriber: keyframe requests go upstream, receiver reports feed its
    /// bandwidth estimate.
    pub(super) fn rtcp(
        &mut self,
        peer_key: PeerKey,
        rtc_id: &str,
        pkts: &[Box<dyn rtc::rtcp::Packet>],
        now: Instant,
    ) {
        let Some(peer) = self.peers.get(&peer_key) else {
            return;
        };
        if peer.role == crate::peer::Role::Publisher {
            self.publisher_rtcp(peer_key, pkts);
            return;
        }
        let subscriber = peer.participant;
        let mut wants_key = false;
        let mut worst_loss: Option<u8> = None;
        for p in pkts {
            let any = p.as_any();
            if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                wants_key = true;
            } else if any
                .is::<rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack>()
            {
                SfuStats::inc(&self.stats.nacks_in);
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                for r in &rr.reports {
                    worst_loss = Some(worst_loss.unwrap_or(0).max(r.fraction_lost));
                    let now_ntp = crate::bwe::ntp_time(std::time::SystemTime::now());
                    if let Some(rtt) =
                        crate::bwe::rtt_from_report(now_ntp, r.last_sender_report, r.delay)
                    {
                        self.timing.rtt.record(rtt.as_micros() as u64);
                    }
                }
            }
        }
        let sent = peer.egress.rate_bps(now);
        if let Some(loss) = worst_loss
            && let Some(s) = self.participants.get_mut(&subscriber)
        {
            let before = s.bwe.estimate_bps();
            let after = s.bwe.on_report(loss, sent, now);
            if after < before {
                // Less room than thought: re-allocate at once.
                self.allocate(subscriber, now);
            }
        }
        if !wants_key {
            return;
        }
        SfuStats::inc(&self.stats.keyframe_requests_in);
        let Some(room_id) = self.participants.get(&subscriber).map(|p| p.room.clone()) else {
            return;
        };
        // On a subscriber connection the rtc track id is our TrackId; the layer is the one
        // this subscriber currently receives.
        let track = TrackId::from_wire(rtc_id);
        let layer = self
            .rooms
            .get_mut(&room_id)
            .and_then(|r| r.tracks.get_mut(&track))
            .and_then(|t| t.down_of(subscriber))
            .map(|d| {
                d.forwarder
                    .current_layer()
                    .unwrap_or(d.forwarder.target_layer())
            })
            .unwrap_or(0);
        self.request_keyframe(&room_id, &track, layer, now);
    }

    /// A publisher's sender reports map its RTP clocks to wall-clock time: recordings use
    /// them to date their files.
    fn publisher_rtcp(&mut self, peer_key: PeerKey, pkts: &[Box<dyn rtc::rtcp::Packet>]) {
        let Some(peer) = self.peers.get(&peer_key) else {
            return;
        };
        let Some(room_id) = self
            .participants
            .get(&peer.participant)
            .map(|p| p.room.clone())
        else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        if room.taps.is_empty() {
            return;
        }
        for p in pkts {
            let Some(sr) = p
                .as_any()
                .downcast_ref::<rtc::rtcp::sender_report::SenderReport>()
            else {
                continue;
            };
            let track = room
                .tracks
                .values()
                .find(|t| t.pub_peer == peer_key && t.layer_of_ssrc(sr.ssrc).is_some())
                .map(|t| t.id.clone());
            if let Some(track) = track {
                let ev = crate::sink::TapEvent::SenderReport {
                    track,
                    ssrc: sr.ssrc,
                    ntp: sr.ntp_time,
                    rtp_ts: sr.rtp_time,
                };
                for tap in &room.taps {
                    tap.send(ev.clone());
                }
            }
        }
    }

    /// Decides which layer of each video track `subscriber` gets (and which tracks it gets
    /// at all: subscriptions, last-N, top-K audio), within its bandwidth.
    pub(super) fn allocate(&mut self, subscriber: ParticipantKey, now: Instant) {
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return;
        };
        p.allocated_at = Some(now);
        let budget = p.bwe.estimate_bps();
        let prefs = p.prefs.clone();
        let pins = p.pins.clone();
        let room_id = p.room.clone();
        let Some(room) = self.rooms.get(&room_id) else {
            return;
        };
        let last_n = self.config.last_n;
        let top_k = self.config.audio_top_k;
        // Who gets video: pinned, then screen sharers, then by speaking recency, then join
        // order; at most `last_n` participants (0 = all).
        let mut candidates: Vec<ParticipantKey> = room
            .members
            .iter()
            .copied()
            .filter(|m| *m != subscriber)
            .collect();
        let sharing: Vec<ParticipantKey> = room
            .tracks
            .values()
            .filter(|t| t.source == TrackSource::Screen)
            .map(|t| t.owner)
            .collect();
        let pinned: Vec<ParticipantKey> = candidates
            .iter()
            .copied()
            .filter(|m| {
                self.participants
                    .get(m)
                    .is_some_and(|x| pins.contains(&x.id))
            })
            .collect();
        let order: HashMap<ParticipantKey, usize> = room
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (*m, i))
            .collect();
        candidates.sort_by_key(|m| {
            (
                !pinned.contains(m),
                !sharing.contains(m),
                std::cmp::Reverse(room.speakers.last_active(m)),
                order.get(m).copied().unwrap_or(usize::MAX),
            )
        });
        let video_from: Vec<ParticipantKey> = if last_n == 0 {
            candidates.clone()
        } else {
            candidates.iter().copied().take(last_n).collect()
        };
        let mut loudest: Vec<ParticipantKey> = candidates.clone();
        loudest.sort_by(|a, b| {
            room.speakers
                .loudness(b)
                .total_cmp(&room.speakers.loudness(a))
        });
        let audio_from: Vec<ParticipantKey> = if top_k == 0 {
            candidates
        } else {
            loudest.into_iter().take(top_k).collect()
        };
        let speakers = room.speakers.speakers();
        let dominant = speakers.first().copied();

        // Demands for video; audio is on or off.
        let mut video: Vec<(TrackId, Demand)> = Vec::new();
        let mut audio: Vec<(TrackId, bool)> = Vec::new();
        let mut audio_bps = 0u64;
        for t in room.tracks.values() {
            let Some(d) = t.down.iter().find(|d| d.subscriber == subscriber) else {
                continue;
            };
            if !d.ready {
                continue;
            }
            let pref = prefs.get(&t.id).copied().unwrap_or_default();
            match t.kind {
                MediaKind::Audio => {
                    let on = pref.subscribed && !t.admin_muted && audio_from.contains(&t.owner);
                    if on {
                        audio_bps += t.layer_rates(now)[0];
                    }
                    audio.push((t.id.clone(), on));
                }
                MediaKind::Video => {
                    let layers = t.layer_count();
                    let wanted = pref.subscribed
                        && !t.admin_muted
                        && (t.source == TrackSource::Screen || video_from.contains(&t.owner));
                    let max_layer = if wanted {
                        allocator::max_layer(pref.quality, pref.height, &t.layer_heights(), layers)
                    } else {
                        None
                    };
                    let priority = if t.source == TrackSource::Screen {
                        PRIORITY_SCREEN
                    } else if dominant == Some(t.owner) {
                        PRIORITY_SPEAKER
                    } else {
                        PRIORITY_NORMAL
                    };
                    video.push((
                        t.id.clone(),
                        Demand {
                            priority,
                            max_layer,
                            layers_bps: t.layer_rates(now),
                            current: d.forwarder.is_active().then(|| d.forwarder.target_layer()),
                        },
                    ));
                }
            }
        }
        let demands: Vec<Demand> = video.iter().map(|(_, d)| *d).collect();
        let targets = allocator::allocate(budget.saturating_sub(audio_bps), &demands);

        let room = match self.rooms.get_mut(&room_id) {
            Some(r) => r,
            None => return,
        };
        let mut keyframes = Vec::new();
        for ((track, demand), target) in video.iter().zip(targets) {
            let Some(t) = room.tracks.get_mut(track) else {
                continue;
            };
            if let Some(m) = demand.max_layer {
                for w in t.wanted_at.iter_mut().take(m as usize + 1) {
                    *w = Some(now);
                }
            }
            let Some(d) = t.down_of(subscriber) else {
                continue;
            };
            match target {
                None => d.forwarder.set_active(false),
                Some(layer) => {
                    // A layer that is not received yet: start on the lowest one that is.
                    let layer = if demand.layers_bps[layer as usize] == 0 {
                        (0..=layer)
                            .find(|l| demand.layers_bps[*l as usize] > 0)
                            .unwrap_or(0)
                    } else {
                        layer
                    };
                    d.forwarder.set_active(true);
                    d.forwarder.set_target_layer(layer);
                    if let Some(l) = d.forwarder.needs_keyframe() {
                        keyframes.push((track.clone(), l));
                    }
                }
            }
        }
        // A simulcast track nobody gets yet still has a lowest layer to start from: a video
        // down-track whose target could not be met because no layer was received yet waits.
        for (track, on) in audio {
            if let Some(d) = room
                .tracks
                .get_mut(&track)
                .and_then(|t| t.down_of(subscriber))
            {
                d.forwarder.set_active(on);
            }
        }
        for (track, layer) in keyframes {
            self.request_keyframe(&room_id, &track, layer, now);
        }
    }

    /// Periodic work: repeat keyframe requests until every waiting down-track has one,
    /// re-allocate, announce active speakers, and tell publishers which layers are wanted.
    pub(super) fn tick(&mut self, now: Instant) {
        // A participant that joined but never completes a negotiation holds a peer
        // connection and room state: it has `negotiation_timeout_ms` to answer.
        let late: Vec<ParticipantKey> = self
            .participants
            .iter()
            .filter(|(_, p)| !p.negotiated && now >= p.negotiate_by)
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            if let Some(p) = self.participants.get_mut(&k) {
                // Once: it is removed at the end of this pass.
                p.negotiated = true;
                tracing::info!(participant = %p.id, room = %p.room, "removed: first negotiation not completed in time");
            }
            SfuStats::inc(&self.stats.negotiation_timeouts);
            self.doomed.push((k, Removal::NegotiationTimeout));
        }
        let waiting: Vec<(RoomId, TrackId, u8)> = self
            .rooms
            .values()
            .flat_map(|r| {
                r.tracks.values().flat_map(move |t| {
                    let mut layers: Vec<u8> = t.wanted_keyframes().collect();
                    layers.sort_unstable();
                    layers.dedup();
                    layers
                        .into_iter()
                        .map(move |l| (r.id.clone(), t.id.clone(), l))
                })
            })
            .collect();
        for (r, t, l) in waiting {
            self.request_keyframe(&r, &t, l, now);
        }
        let due: Vec<ParticipantKey> = self
            .participants
            .iter()
            .filter(|(_, p)| {
                p.allocated_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= ALLOCATE_EVERY)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            self.allocate(k, now);
        }
        self.announce_speakers(now);
        self.dynacast(now);
    }

    fn announce_speakers(&mut self, now: Instant) {
        let rooms: Vec<RoomId> = self.rooms.keys().cloned().collect();
        for room_id in rooms {
            let Some(room) = self.rooms.get_mut(&room_id) else {
                continue;
            };
            let Some(speakers) = room.speakers.poll(now) else {
                continue;
            };
            let ids = speakers
                .iter()
                .filter_map(|k| self.participants.get(k).map(|p| p.id.clone()))
                .collect();
            self.broadcast(
                &room_id,
                None,
                ServerMessage::ActiveSpeakers { speakers: ids },
            );
            // Speaking recency drives last-N and priorities: re-allocate the room.
            let members: Vec<_> = self
                .rooms
                .get(&room_id)
                .map(|r| r.members.clone())
                .unwrap_or_default();
            for m in members {
                self.allocate(m, now);
            }
        }
    }

    /// Dynacast: tells each publisher of a simulcast track which of the layers it
    /// negotiated someone wants, so that it stops encoding the others.
    fn dynacast(&mut self, now: Instant) {
        let mut notices: Vec<(ParticipantKey, ServerMessage)> = Vec::new();
        for room in self.rooms.values_mut() {
            // A recording takes the best layer: it stays on while the room is recorded.
            let recorded = !room.taps.is_empty();
            for t in room.tracks.values_mut() {
                if t.kind != MediaKind::Video {
                    continue;
                }
                let Some(mid) = t.mid.clone() else { continue };
                // The layer set is the publisher's latest offer (it may have renegotiated).
                let Some(rids) = self
                    .peers
                    .get(&t.pub_peer)
                    .and_then(|p| p.offered_rids.get(&mid))
                else {
                    continue;
                };
                if rids.is_empty() {
                    continue;
                }
                t.set_negotiated_rids(rids);
                let active = t.dynacast_rids(now, DYNACAST_GRACE, recorded);
                if t.announced_rids.as_ref() != Some(&active) {
                    t.announced_rids = Some(active.clone());
                    notices.push((
                        t.owner,
                        ServerMessage::PublisherLayers {
                            mid,
                            active_rids: active,
                        },
                    ));
                }
            }
        }
        for (owner, msg) in notices {
            self.send_to(owner, msg);
        }
    }
}

/// Rewrites a VP8 payload's picture id and TL0PICIDX in a copy (the original is shared by
/// every other down-track).
fn rewrite_vp8(payload: &bytes::Bytes, desc: &Vp8Descriptor, v: Vp8Fields) -> bytes::Bytes {
    let mut b = bytes::BytesMut::from(&payload[..]);
    if let (Some(off), Some((pid, long))) = (desc.picture_id_offset, v.picture_id) {
        if long {
            if off + 1 < b.len() {
                b[off] = 0x80 | ((pid >> 8) as u8 & 0x7f);
                b[off + 1] = pid as u8;
            }
        } else if off < b.len() {
            b[off] = (pid as u8) & 0x7f;
        }
    }
    if let (Some(off), Some(tl0)) = (desc.tl0picidx_offset, v.tl0picidx)
        && off < b.len()
    {
        b[off] = tl0;
    }
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
