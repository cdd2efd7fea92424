//! A subscriber connection's down-track slots: opening and closing them, their egress
//! streams (SRTP, sender reports, retransmissions), and the mids they were negotiated at.

use super::{Peer, TrackCodec};
use crate::egress::{DownStream, Rtx, StreamParams, wire_size};
use crate::error::PeerError;
use crate::pacer::Paced;
use confab_proto::{MediaKind, TrackId};
use rand::Rng;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpRtxParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

/// What became of a packet handed to [`Peer::write_rtp`].
#[derive(Debug)]
pub enum Written {
    /// Send this datagram to this address now (the stream's SSRC for the send batch).
    Now(bytes::Bytes, SocketAddr, u32),
    /// The pacer holds it: the peer's timer moved.
    Queued,
    /// Nowhere to send it.
    Dropped,
}

/// A packet waiting in the pacer: protected when it leaves.
#[derive(Debug)]
pub struct PacedRtp {
    slot: usize,
    pkt: rtc::rtp::Packet,
    patch: Option<crate::rtp::codec::Vp8Patch>,
}

/// An outgoing (down) track slot of a subscriber connection.
pub struct SenderSlot {
    pub sender: RTCRtpSenderId,
    pub ssrc: u32,
    pub mime: String,
    pub clock_rate: u32,
    pub kind: MediaKind,
    /// Resolved once the subscriber's answer fixed the payload types.
    pub payload_type: Option<u8>,
    /// Audio: the subscriber's `audio/red` payload type, when its answer has one (it
    /// then gets RED made from the Opus it is sent).
    pub red_payload_type: Option<u8>,
    /// Video: its RTX stream's SSRC (offered with it) and payload type (when the answer
    /// accepted one): probe clusters go out on it.
    pub rtx_ssrc: Option<u32>,
    pub rtx_payload_type: Option<u8>,
    /// Where its packets are protected and accounted for, once the payload type is known
    /// and the connection's keys are ([`crate::egress`]).
    stream: Option<DownStream>,
}

/// Probe copies are taken from this many of the newest packets (over again if a cluster
/// needs more).
const PROBE_DEPTH: u16 = 64;

/// A NACKed packet is not sent again within a round trip of its last copy: this long when
/// no round trip is known yet, and never less or more than these.
const DEFAULT_RESEND_GAP: std::time::Duration = std::time::Duration::from_millis(100);
const MIN_RESEND_GAP: std::time::Duration = std::time::Duration::from_millis(10);
const MAX_RESEND_GAP: std::time::Duration = std::time::Duration::from_millis(1000);

impl Peer {
    /// Subscriber: gives every negotiated down-track without one its egress stream, once
    /// the connection's keys are known.
    pub(super) fn open_streams(&mut self) {
        let Some(keys) = &self.keys else {
            return;
        };
        for slot in self.senders.iter_mut().flatten() {
            if slot.stream.is_some() {
                continue;
            }
            let Some(payload_type) = slot.payload_type else {
                continue;
            };
            slot.stream = DownStream::new(
                keys,
                StreamParams {
                    ssrc: slot.ssrc,
                    payload_type: slot.red_payload_type.unwrap_or(payload_type),
                    clock_rate: slot.clock_rate,
                    retransmit: slot.kind == MediaKind::Video,
                    red: slot.red_payload_type.map(|_| payload_type),
                    rtx: slot
                        .rtx_ssrc
                        .zip(slot.rtx_payload_type)
                        .map(|(ssrc, payload_type)| Rtx { ssrc, payload_type }),
                },
            );
            if slot.stream.is_none() {
                tracing::warn!(profile = ?keys.profile(), "no SRTP context for this profile");
            }
        }
    }

    /// Subscriber: which down-track slots have a negotiated payload type.
    pub fn negotiated_slots(&self) -> Vec<bool> {
        self.senders
            .iter()
            .map(|s| s.as_ref().is_some_and(|s| s.payload_type.is_some()))
            .collect()
    }

    /// The transceiver mid for each down-track slot, once negotiated.
    pub fn slot_mids(&mut self) -> Vec<(usize, String)> {
        let mut sender_mid = HashMap::new();
        let ids: Vec<_> = self.pc.get_transceivers().collect();
        for id in ids {
            if let Some(t) = self.pc.rtp_transceiver(id)
                && let (Some(s), Some(mid)) = (t.sender(), t.mid().clone())
            {
                sender_mid.insert(s, mid);
            }
        }
        self.senders
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = s.as_ref()?;
                Some((i, sender_mid.get(&s.sender)?.clone()))
            })
            .collect()
    }

    /// Subscriber: opens down-track `slot` for `track`, sending as `owner`'s stream.
    pub fn add_down_track(
        &mut self,
        slot: usize,
        track: &TrackId,
        owner: &str,
        kind: MediaKind,
        codec: &TrackCodec,
    ) -> Result<(), PeerError> {
        let ssrc: u32 = rand::rng().random();
        // Video gets an RTX stream (when the subscriber's answer accepts one): the probe
        // clusters before an upgrade are sent on it ([`crate::probe`]).
        let rtx_ssrc = (kind == MediaKind::Video).then(|| rand::rng().random::<u32>());
        let rtc_kind = match kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        let media_track = MediaStreamTrack::new(
            owner.to_owned(),
            track.as_str().to_owned(),
            track.as_str().to_owned(),
            rtc_kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    rtx: rtx_ssrc.map(|ssrc| RTCRtpRtxParameters { ssrc }),
                    ..Default::default()
                },
                codec: codec.rtp.clone(),
                ..Default::default()
            }],
        );
        // add_track reuses a transceiver freed by remove_track (the SDP does not grow with
        // churn); the server only ever sends on it.
        let sender = self.pc.add_track(media_track).map_err(PeerError::rtc)?;
        if let Some(mut t) = self.pc.rtp_transceiver(sender.into()) {
            t.set_direction(RTCRtpTransceiverDirection::Sendonly);
        }
        let s = SenderSlot {
            sender,
            ssrc,
            mime: codec.rtp.mime_type.clone(),
            clock_rate: codec.rtp.clock_rate,
            kind,
            payload_type: None,
            red_payload_type: None,
            rtx_ssrc,
            rtx_payload_type: None,
            stream: None,
        };
        if self.senders.len() <= slot {
            self.senders.resize_with(slot + 1, || None);
        }
        self.senders[slot] = Some(s);
        Ok(())
    }

    pub fn remove_down_track(&mut self, slot: usize) {
        if let Some(s) = self.senders.get_mut(slot).and_then(Option::take)
            && let Err(e) = self.pc.remove_track(s.sender)
        {
            tracing::debug!(error = %e, "remove_track failed");
        }
    }

    /// Protects a rewritten packet for down-track `slot` (its header extensions already
    /// stripped: ids are per leg) and returns the datagram, where it goes and its SSRC, or
    /// leaves it to the pacer ([`crate::pacer`]: video beyond the connection's pacing rate
    /// waits, and leaves through [`Peer::poll_write`] when due). Dropped when the slot is
    /// gone, not negotiated yet, or the connection has no media path or keys.
    pub fn write_rtp(
        &mut self,
        slot: usize,
        pkt: rtc::rtp::Packet,
        patch: Option<crate::rtp::codec::Vp8Patch>,
        now: Instant,
        scratch: &mut Vec<u8>,
    ) -> Written {
        let Some(to) = self.paths.media() else {
            return Written::Dropped;
        };
        let Some(s) = self.senders.get_mut(slot).and_then(Option::as_mut) else {
            return Written::Dropped;
        };
        let urgent = s.kind == MediaKind::Audio;
        let Some(stream) = s.stream.as_mut() else {
            return Written::Dropped;
        };
        // RED (audio, never held) before the packet is sized: the pacer's budget and the
        // transport-wide record count what goes on the wire.
        let mut pkt = pkt;
        stream.add_redundancy(&mut pkt);
        let bytes = wire_size(pkt.payload.len() + 12);
        let item = PacedRtp { slot, pkt, patch };
        let item = match self.pacer.push(item, bytes, urgent, now) {
            Paced::Now(item) => item,
            Paced::Queued => return Written::Queued,
        };
        match self.send_rtp(item, now, scratch) {
            Some((datagram, ssrc)) => Written::Now(datagram, to, ssrc),
            None => Written::Dropped,
        }
    }

    /// Protects and accounts for one packet leaving now (from [`Peer::write_rtp`] or the
    /// pacer): its transport-wide number is drawn here, so that the feedback's departure
    /// time is when it left, not when it was queued.
    fn send_rtp(
        &mut self,
        PacedRtp { slot, pkt, patch }: PacedRtp,
        now: Instant,
        scratch: &mut Vec<u8>,
    ) -> Option<(bytes::Bytes, u32)> {
        let stream = self.senders.get_mut(slot)?.as_mut()?.stream.as_mut()?;
        let size = pkt.payload.len() + 12;
        let twcc = self.cc.as_mut().map(|cc| {
            let seq = cc.on_send(
                stream.ssrc(),
                pkt.header.sequence_number,
                wire_size(size),
                now,
            );
            (cc.ext_id(), seq)
        });
        let datagram = stream.write(pkt, patch, twcc, now, scratch)?;
        let ssrc = stream.ssrc();
        self.egress.add(size, now);
        if let Some(p) = &mut self.prober {
            p.on_sent(wire_size(size));
        }
        Some((datagram, ssrc))
    }

    /// Subscriber: sends a probe cluster at `target_bps` ([`crate::probe`]): for the next
    /// 50 ms, RTX copies of recent video packets are added to what it is sent, so that
    /// all of it leaves at that rate. Returns whether one began (not without transport-wide
    /// feedback, nor while one is being sent).
    pub fn start_probe(&mut self, target_bps: u64, now: Instant) -> bool {
        let Some(cc) = self.cc.as_mut() else {
            return false;
        };
        if self.prober.is_some() {
            return false;
        }
        cc.start_cluster();
        self.prober = Some(crate::probe::Prober::new(target_bps, now));
        self.send_probes(now);
        true
    }

    /// Subscriber: the probe cluster's packets that are due (flushed with `poll_write`);
    /// ends the cluster when its time is over, or when there is nothing to copy.
    pub(super) fn send_probes(&mut self, now: Instant) {
        let Some(cc) = self.cc.as_mut() else {
            self.prober = None;
            return;
        };
        let Some(prober) = self.prober.as_mut() else {
            return;
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut ended = prober.finished(now);
        while !ended && prober.due(now) {
            // The most recent packets first, from the first video down-track that still
            // has the packet that far back.
            let back = self.probe_back % PROBE_DEPTH;
            self.probe_back = self.probe_back.wrapping_add(1);
            let copy = self
                .senders
                .iter_mut()
                .flatten()
                .filter_map(|s| s.stream.as_mut())
                .find_map(|st| st.probe_copy(back, cc, now, &mut scratch));
            match copy {
                Some((datagram, size)) => {
                    prober.on_sent(size);
                    self.out.push_back(datagram);
                }
                None if back == 0 => ended = true,
                None => self.probe_back = 0,
            }
        }
        self.scratch = scratch;
        if ended || prober.finished(now) {
            cc.end_cluster(now);
            self.prober = None;
            self.probe_back = 0;
        }
    }

    /// Subscriber: moves the paced packets that are due to the output (flushed with
    /// `poll_write`). Returns how many left.
    pub(super) fn release_paced(&mut self, now: Instant) -> usize {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut n = 0;
        while let Some(item) = self.pacer.pop(now) {
            if let Some((datagram, _)) = self.send_rtp(item, now, &mut scratch) {
                self.out.push_back(datagram);
                n += 1;
            }
        }
        self.scratch = scratch;
        n
    }

    /// Subscriber: what its pacer follows moved (`Room::pacing_bps`: the estimate, capped
    /// by what the allocation sends).
    pub fn set_pacing_bps(&mut self, bps: u64) {
        self.pacer.set_estimate(bps);
    }

    /// Subscriber: queues the sender reports that are due (flushed with `poll_write`).
    /// Returns whether any was.
    pub fn sender_reports(&mut self, now: Instant, wall: std::time::SystemTime) -> bool {
        let before = self.out.len();
        for slot in self.senders.iter_mut().flatten() {
            if let Some(d) = slot.stream.as_mut().and_then(|s| s.report(now, wall)) {
                self.out.push_back(d);
            }
        }
        self.out.len() > before
    }

    /// Subscriber: queues the retransmissions a NACK for `media_ssrc` asks for; returns
    /// how many were still in the history.
    pub(super) fn retransmit(
        &mut self,
        media_ssrc: u32,
        nack: &rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack,
    ) -> u32 {
        let Some(stream) = self
            .senders
            .iter_mut()
            .flatten()
            .find_map(|s| s.stream.as_mut().filter(|st| st.ssrc() == media_ssrc))
        else {
            return 0;
        };
        let scratch = &mut self.scratch;
        let mut n = 0;
        let now = Instant::now();
        let gap = self
            .cc
            .as_ref()
            .and_then(|cc| cc.rtt())
            .or(self.rtt)
            .unwrap_or(DEFAULT_RESEND_GAP)
            .clamp(MIN_RESEND_GAP, MAX_RESEND_GAP);
        for pair in &nack.nacks {
            for seq in crate::egress::nacked(pair.packet_id, pair.lost_packets) {
                let cc = self.cc.as_mut();
                if let Some(d) = stream.retransmit(seq, cc, now, gap, scratch) {
                    self.out.push_back(d);
                    n += 1;
                }
            }
        }
        n
    }
}
