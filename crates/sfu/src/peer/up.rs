//! A publisher connection's side: answering its offers, the tracks it opens, and what
//! arrives on them (audio sent as RED made plain Opus again, `rtp::red::RedDecoder`).

use super::{Peer, PeerEvent, TrackCodec, codec::by_mime, factory};
use crate::error::PeerError;
use crate::keys::TrackKey;
use crate::rtp::Codec;
use confab_proto::MediaKind;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::RTCRtpReceiverId;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

/// A track received on a publisher connection.
#[derive(Debug, Clone)]
pub struct ReceivedTrack {
    pub receiver: RTCRtpReceiverId,
    pub track: TrackKey,
    pub media_ssrc: u32,
    /// Audio sent as RED: made plain Opus again, with what the uplink lost restored.
    pub red: Option<crate::rtp::red::RedDecoder>,
}

impl Peer {
    /// Publisher: applies the client's offer; returns the answer SDP and the simulcast
    /// rids each section (mid) of the offer sends, lowest layer first.
    pub fn answer_offer(
        &mut self,
        sdp: String,
        announce: SocketAddr,
    ) -> Result<(String, HashMap<String, Vec<String>>), PeerError> {
        let offered_rids = crate::sdp::send_rids(&sdp);
        let sdp = crate::sdp::with_red_first(&crate::sdp::with_opus_dtx(&sdp));
        let keep = self.learned_simulcast(&sdp);
        let sdp = if keep.is_empty() {
            sdp
        } else {
            crate::sdp::without_stream_ids(&sdp, &keep)
        };
        let offer = RTCSessionDescription::offer(sdp).map_err(PeerError::sdp)?;
        let first = self.pc.local_description().is_none();
        self.pc
            .set_remote_description(Instant::now(), offer)
            .map_err(PeerError::sdp)?;
        if first {
            self.add_host_candidate(announce)?;
        }
        let answer = self.pc.create_answer(None).map_err(PeerError::rtc)?;
        self.pc
            .set_local_description(Instant::now(), answer)
            .map_err(PeerError::rtc)?;
        Ok((self.noted_local_sdp()?, offered_rids))
    }

    /// Publisher: the mids of `offer` whose simulcast receiver must survive it as it is.
    ///
    /// rtc 0.21.1 learns a simulcast layer's SSRC from the mid and rid header extensions of
    /// its first packets, and forgets it at every renegotiation: applying an offer rebuilds
    /// the receiver of each section that names a stream (`start_rtp`), with no SSRC per rid.
    /// Chromium stops sending mid and rid once receiver reports show the SSRCs are known,
    /// so after the publisher renegotiates (shares its screen, say) every packet of its
    /// camera is dropped inside rtc as belonging to no track. A section offered without
    /// its stream ids is left alone by that step (and nothing else in the answer depends on
    /// them), so for a section that still sends the same track with the same rids, they are
    /// taken out of the offer rtc sees, and its receiver keeps the learned SSRC -> rid
    /// mapping. A changed track or rid set is rebuilt as before (and learned again from the
    /// extensions, which a browser sends on a new stream).
    fn learned_simulcast(&mut self, offer: &str) -> Vec<String> {
        if self.pc.local_description().is_none() {
            return Vec::new();
        }
        let sections = crate::sdp::media_sections(offer);
        if sections.iter().all(|s| s.send_rids.is_empty()) {
            return Vec::new();
        }
        let mut receivers = HashMap::new();
        let ids: Vec<_> = self.pc.get_transceivers().collect();
        for id in ids {
            if let Some(t) = self.pc.rtp_transceiver(id)
                && let (Some(mid), Some(rx)) = (t.mid().clone(), t.receiver())
            {
                receivers.insert(mid, rx);
            }
        }
        let mut keep = Vec::new();
        for s in sections {
            let (Some((stream, track)), false) = (&s.msid, s.send_rids.is_empty()) else {
                continue;
            };
            let Some(rx) = receivers.get(&s.mid).and_then(|r| self.pc.rtp_receiver(*r)) else {
                continue;
            };
            let t = rx.track();
            let codings = t.codings();
            let same_rids = codings.len() == s.send_rids.len()
                && codings
                    .iter()
                    .all(|c| s.send_rids.contains(&c.rtp_coding_parameters.rid));
            let learned = codings
                .iter()
                .any(|c| c.rtp_coding_parameters.ssrc.is_some());
            if same_rids && learned && t.stream_id() == stream && t.track_id() == track {
                keep.push(s.mid);
            }
        }
        keep
    }

    /// Publisher: asks for a keyframe of a received track's encoding `media_ssrc`.
    pub fn send_pli(&mut self, rtc_track: &str, media_ssrc: u32, now: Instant) {
        let Some(rt) = self.received.get(rtc_track) else {
            return;
        };
        let receiver = rt.receiver;
        if let Some(mut rx) = self.pc.rtp_receiver(receiver) {
            let _ = rx.write_rtcp(
                now,
                vec![Box::new(PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc,
                })],
            );
        }
    }

    /// Publisher: the codec, mid and audio-level extension id of a track that just opened.
    pub(super) fn describe_receiver(
        &mut self,
        receiver: RTCRtpReceiverId,
        ssrc: u32,
    ) -> Option<(TrackCodec, MediaKind, Option<String>, Option<u8>)> {
        let mut rx = self.pc.rtp_receiver(receiver)?;
        let params = rx.get_parameters().rtp_parameters.clone();
        let audio_level = params
            .header_extensions
            .iter()
            .find(|e| e.uri == rtc::sdp::extmap::AUDIO_LEVEL_URI)
            .map(|e| e.id as u8);
        let track = rx.track();
        let kind = match track.kind() {
            RtpCodecKind::Audio => MediaKind::Audio,
            RtpCodecKind::Video => MediaKind::Video,
            _ => return None,
        };
        let mut rtp = track.codec(ssrc)?.clone();
        if rtp.mime_type.eq_ignore_ascii_case(factory::MIME_TYPE_RED) {
            // RED is made Opus again as it arrives (`ReceivedTrack::red`).
            rtp = by_mime(&params.codecs, MIME_TYPE_OPUS)?.rtp_codec.clone();
        }
        let payload_type = by_mime(&params.codecs, &rtp.mime_type).map_or(0, |c| c.payload_type);
        let codec = TrackCodec {
            codec: Codec::from_mime(&rtp.mime_type),
            rtp,
            payload_type,
        };
        let ids: Vec<_> = self.pc.get_transceivers().collect();
        let mid = ids.into_iter().find_map(|id| {
            let t = self.pc.rtp_transceiver(id)?;
            (t.receiver() == Some(receiver))
                .then(|| t.mid().clone())
                .flatten()
        });
        Some((codec, kind, mid, audio_level))
    }

    /// Publisher: the room's key for a track that opened (see [`Opened::New`]).
    pub fn track_accepted(
        &mut self,
        rtc_id: String,
        receiver: RTCRtpReceiverId,
        ssrc: u32,
        track: TrackKey,
    ) {
        let red = self.pc.rtp_receiver(receiver).and_then(|mut rx| {
            let codecs = &rx.get_parameters().rtp_parameters.codecs;
            Some(crate::rtp::red::RedDecoder::new(
                by_mime(codecs, factory::MIME_TYPE_RED)?.payload_type,
                by_mime(codecs, MIME_TYPE_OPUS)?.payload_type,
            ))
        });
        self.received.insert(
            rtc_id,
            ReceivedTrack {
                receiver,
                track,
                media_ssrc: ssrc,
                red,
            },
        );
    }

    /// Publisher: an RTP packet rtc read for track `track_id`, as the worker gets it (a
    /// RED packet: the packets it restores and its primary are queued, oldest first).
    pub(super) fn received_rtp(
        &mut self,
        track_id: &str,
        pkt: rtc::rtp::Packet,
    ) -> Option<PeerEvent> {
        let rt = self.received.get_mut(track_id)?;
        let Some(red) = rt.red.as_mut() else {
            return Some(PeerEvent::Rtp(rt.track, pkt));
        };
        let (track, pending) = (rt.track, &mut self.pending);
        let d = red.push(pkt, |p| pending.push_back(PeerEvent::Rtp(track, p)));
        (d != crate::rtp::red::Decoded::default()).then_some(PeerEvent::Red(d))
    }
}
