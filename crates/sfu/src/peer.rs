//! The only module that touches the webrtc-rs `rtc` core (with [`crate::worker`], which
//! owns the socket). A [`Peer`] is one sans-IO `RTCPeerConnection` plus what the worker
//! needs to route datagrams to it and media out of it.
//!
//! Every peer connection on a worker shares one UDP socket, so each is built as an
//! ICE-lite agent with a unique username fragment (how the worker demultiplexes STUN) and
//! one host candidate: the worker's announced address.
//!
//! Publisher connections (the client offers) receive; subscriber connections (the server
//! offers) send and carry the chat data channel. The two get different interceptors:
//! a receiver needs NACK generation, receiver reports and transport-wide CC feedback for
//! the browser's bandwidth estimate; a sender needs a retransmission buffer and sender
//! reports.

use crate::error::PeerError;
use crate::rtp::Codec;
use confab_proto::{IceCandidate, MediaKind, TrackId};
use rand::Rng;
use rand::distr::Alphanumeric;
use rtc::interceptor::{
    Attribute, Interceptor, NackGeneratorBuilder, NackResponderBuilder,
    Packet as InterceptorPacket, ReceiverReportBuilder, Registry, SenderReportBuilder, Slot,
    StreamInfo, TaggedPacket, TwccReceiverBuilder,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MIME_TYPE_VP9, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection};
use rtc::sansio::Protocol;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Worker-local key of a peer connection.
pub type PeerKey = u64;
/// Worker-local key of a participant.
pub type ParticipantKey = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Subscriber,
}

/// Settings shared by every peer connection of a worker.
#[derive(Clone)]
pub struct PeerFactory {
    /// The address put in the host candidate and used as the local address of every
    /// datagram handed to the ICE agent (which matches it exactly).
    pub announce: SocketAddr,
    /// One certificate for the worker: generating a key per connection costs a join
    /// milliseconds of CPU for nothing (the fingerprint is per connection in the SDP anyway).
    pub certificate: RTCCertificate,
    pub ice_disconnected_timeout: Duration,
    pub ice_failed_timeout: Duration,
    pub max_nacks_per_packet: u16,
}

/// An outgoing (down) track slot of a subscriber connection.
#[derive(Debug, Clone)]
pub struct SenderSlot {
    pub sender: RTCRtpSenderId,
    pub track: TrackId,
    pub ssrc: u32,
    pub mime: String,
    /// Resolved once the subscriber's answer fixed the payload types.
    pub payload_type: Option<u8>,
}

/// A track received on a publisher connection.
#[derive(Debug, Clone)]
pub struct ReceivedTrack {
    pub receiver: RTCRtpReceiverId,
    pub track: TrackId,
    pub media_ssrc: u32,
}

pub struct Peer {
    pub pc: RTCPeerConnection,
    pub role: Role,
    pub participant: ParticipantKey,
    pub ufrag: String,
    /// Remote addresses that passed an ICE check: where datagrams come from and go to.
    pub addrs: Vec<SocketAddr>,
    /// Which of them the agent is shown, and which one media goes to.
    pub paths: Paths,
    pub connected: bool,
    /// The deadline registered in the worker's timer set.
    pub timer: Option<Instant>,
    /// Publisher: rtc track id -> the track it feeds.
    pub received: HashMap<String, ReceivedTrack>,
    /// Publisher: the simulcast rids each section (mid) of the applied offer sends,
    /// lowest layer first: the layers it negotiated, whether or not they arrived yet.
    pub offered_rids: HashMap<String, Vec<String>>,
    /// Subscriber: the down-track slots, indexed by `DownTrack::slot`.
    pub senders: Vec<Option<SenderSlot>>,
    /// Subscriber: the chat data channel, and whether it is open.
    pub chat: Option<(usize, bool)>,
    /// Subscriber: what is sent toward it (for its bandwidth estimate).
    pub egress: crate::bwe::RateMeter,
}

impl PeerFactory {
    pub fn build(&self, role: Role, participant: ParticipantKey) -> Result<Peer, PeerError> {
        let ufrag = random_string(16);
        let pwd = random_string(32);
        let mut media = MediaEngine::default();
        register_codecs(&mut media, role)?;

        let mut registry = Registry::new();
        match role {
            Role::Publisher => {
                registry = registry
                    .with(
                        Slot::NackGenerator,
                        NackGeneratorBuilder::new()
                            .with_max_nacks_per_packet(self.max_nacks_per_packet)
                            .build(),
                    )
                    .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
                    .with(Slot::TwccReceiver, TwccReceiverBuilder::new().build())
                    .with(Slot::from(FEEDBACK_TAP_SLOT), FeedbackTap::default());
                // Transport-wide CC feedback for the browser's uplink estimate; mid and
                // rid for simulcast; the audio level for the speaker detector.
                use rtc::sdp::extmap;
                for (uri, kind) in [
                    (extmap::TRANSPORT_CC_URI, RtpCodecKind::Video),
                    (extmap::TRANSPORT_CC_URI, RtpCodecKind::Audio),
                    (extmap::SDES_MID_URI, RtpCodecKind::Video),
                    (extmap::SDES_RTP_STREAM_ID_URI, RtpCodecKind::Video),
                    (extmap::SDES_REPAIR_RTP_STREAM_ID_URI, RtpCodecKind::Video),
                    (extmap::SDES_MID_URI, RtpCodecKind::Audio),
                    (extmap::AUDIO_LEVEL_URI, RtpCodecKind::Audio),
                ] {
                    media
                        .register_header_extension(
                            rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                                uri: uri.to_owned(),
                            },
                            kind,
                            None,
                        )
                        .map_err(PeerError::rtc)?;
                }
            }
            Role::Subscriber => {
                registry = registry
                    .with(Slot::NackResponder, NackResponderBuilder::new().build())
                    .with(Slot::SenderReport, SenderReportBuilder::new().build())
                    .with(Slot::from(FEEDBACK_TAP_SLOT), FeedbackTap::default());
            }
        }

        let settings = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_credentials(ufrag.clone(), pwd)
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_ice_timeouts(
                Some(self.ice_disconnected_timeout),
                Some(self.ice_failed_timeout),
                None,
            )
            .with_srtp_replay_protection_window(1024)
            .build();
        let config = RTCConfigurationBuilder::new()
            .with_certificates(vec![self.certificate.clone()])
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(config)
            .with_setting_engine(settings)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .build(Instant::now())
            .map_err(PeerError::rtc)?;

        let mut chat = None;
        if role == Role::Subscriber {
            let dc = pc
                .create_data_channel(confab_proto::CHAT_CHANNEL_LABEL, None)
                .map_err(PeerError::rtc)?;
            chat = Some((dc.id(), false));
        }

        Ok(Peer {
            pc,
            role,
            participant,
            ufrag,
            addrs: Vec::new(),
            paths: Paths::default(),
            connected: false,
            timer: None,
            received: HashMap::new(),
            offered_rids: HashMap::new(),
            senders: Vec::new(),
            chat,
            egress: Default::default(),
        })
    }
}

fn random_string(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

fn register_codecs(media: &mut MediaEngine, _role: Role) -> Result<(), PeerError> {
    let video_fb = vec![
        RTCPFeedback {
            typ: "ccm".into(),
            parameter: "fir".into(),
        },
        RTCPFeedback {
            typ: "nack".into(),
            parameter: "".into(),
        },
        RTCPFeedback {
            typ: "nack".into(),
            parameter: "pli".into(),
        },
        RTCPFeedback {
            typ: "transport-cc".into(),
            parameter: "".into(),
        },
    ];
    let codec = |mime: &str, clock_rate, channels, fmtp: &str, fb: Vec<RTCPFeedback>, pt| {
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: mime.to_owned(),
                clock_rate,
                channels,
                sdp_fmtp_line: fmtp.to_owned(),
                rtcp_feedback: fb,
            },
            payload_type: pt,
        }
    };
    media
        .register_codec(
            codec(
                MIME_TYPE_OPUS,
                48000,
                2,
                "minptime=10;useinbandfec=1",
                vec![],
                111,
            ),
            RtpCodecKind::Audio,
        )
        .map_err(PeerError::rtc)?;
    for c in [
        codec(MIME_TYPE_VP8, 90000, 0, "", video_fb.clone(), 96),
        codec(
            MIME_TYPE_VP9,
            90000,
            0,
            "profile-id=0",
            video_fb.clone(),
            98,
        ),
        codec(
            MIME_TYPE_H264,
            90000,
            0,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            video_fb.clone(),
            102,
        ),
    ] {
        media
            .register_codec(c, RtpCodecKind::Video)
            .map_err(PeerError::rtc)?;
    }
    Ok(())
}

/// The codec of a published track, as needed to open down-tracks for it.
#[derive(Debug, Clone)]
pub struct TrackCodec {
    pub codec: Codec,
    pub rtp: RTCRtpCodec,
    /// The payload type the publisher sends it with.
    pub payload_type: u8,
}

impl Peer {
    /// Adds the worker's host candidate (and the end-of-candidates marker) so that it is
    /// in the next local description.
    fn add_host_candidate(&mut self, announce: SocketAddr) -> Result<(), PeerError> {
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: announce.ip().to_string(),
                port: announce.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(PeerError::rtc)?;
        let init = RTCIceCandidate::from(&candidate)
            .to_json()
            .map_err(PeerError::rtc)?;
        self.pc.add_local_candidate(init).map_err(PeerError::rtc)?;
        self.pc
            .add_local_candidate(RTCIceCandidateInit::default())
            .map_err(PeerError::rtc)?;
        Ok(())
    }

    /// Publisher: applies the client's offer and returns the answer SDP.
    pub fn answer_offer(&mut self, sdp: String, announce: SocketAddr) -> Result<String, PeerError> {
        let offered_rids = crate::sdp::send_rids(&sdp);
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
        self.offered_rids = offered_rids;
        self.local_sdp()
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

    /// Subscriber: creates an offer for the current set of down-tracks.
    pub fn create_offer(&mut self, announce: SocketAddr) -> Result<String, PeerError> {
        let first = self.pc.local_description().is_none();
        let offer = self.pc.create_offer(None).map_err(PeerError::rtc)?;
        self.pc
            .set_local_description(Instant::now(), offer)
            .map_err(PeerError::rtc)?;
        if first {
            self.add_host_candidate(announce)?;
        }
        self.local_sdp()
    }

    fn local_sdp(&self) -> Result<String, PeerError> {
        self.pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| PeerError::Rtc("no local description".into()))
    }

    /// Subscriber: applies the client's answer, then learns each down-track's payload type.
    pub fn apply_answer(&mut self, sdp: String) -> Result<(), PeerError> {
        let answer = RTCSessionDescription::answer(sdp).map_err(PeerError::sdp)?;
        self.pc
            .set_remote_description(Instant::now(), answer)
            .map_err(PeerError::sdp)?;
        for slot in self.senders.iter_mut().flatten() {
            if slot.payload_type.is_some() {
                continue;
            }
            if let Some(mut sender) = self.pc.rtp_sender(slot.sender) {
                slot.payload_type = sender
                    .get_parameters()
                    .rtp_parameters
                    .codecs
                    .iter()
                    .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&slot.mime))
                    .map(|c| c.payload_type);
            }
        }
        Ok(())
    }

    pub fn add_remote_candidate(&mut self, c: IceCandidate) -> Result<(), PeerError> {
        if c.candidate.is_empty() {
            // End of candidates: nothing to do for an ICE-lite agent.
            return Ok(());
        }
        self.pc
            .add_remote_candidate(RTCIceCandidateInit {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_mline_index: c.sdp_mline_index,
                username_fragment: c.username_fragment,
                ..Default::default()
            })
            .map_err(PeerError::candidate)
    }

    /// Whether a transceiver with this mid exists.
    pub fn has_mid(&mut self, mid: &str) -> bool {
        let ids: Vec<_> = self.pc.get_transceivers().collect();
        ids.into_iter().any(|id| {
            self.pc
                .rtp_transceiver(id)
                .is_some_and(|t| t.mid().as_deref() == Some(mid))
        })
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

    /// Subscriber: opens a down-track slot for `track`, sending as `owner`'s stream.
    pub fn add_down_track(
        &mut self,
        track: &TrackId,
        owner: &str,
        kind: MediaKind,
        codec: &TrackCodec,
    ) -> Result<usize, PeerError> {
        let ssrc: u32 = rand::rng().random();
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
        let slot = SenderSlot {
            sender,
            track: track.clone(),
            ssrc,
            mime: codec.rtp.mime_type.clone(),
            payload_type: None,
        };
        if let Some(i) = self.senders.iter().position(Option::is_none) {
            self.senders[i] = Some(slot);
            Ok(i)
        } else {
            self.senders.push(Some(slot));
            Ok(self.senders.len() - 1)
        }
    }

    pub fn remove_down_track(&mut self, slot: usize) {
        if let Some(s) = self.senders.get_mut(slot).and_then(Option::take)
            && let Err(e) = self.pc.remove_track(s.sender)
        {
            tracing::debug!(error = %e, "remove_track failed");
        }
    }

    /// Writes a rewritten packet on a down-track (its header extensions already stripped:
    /// ids are per leg). `false` when the slot is gone or not negotiated yet.
    pub fn write_rtp(&mut self, slot: usize, mut pkt: rtc::rtp::Packet, now: Instant) -> bool {
        let Some(Some(s)) = self.senders.get(slot) else {
            return false;
        };
        let Some(pt) = s.payload_type else {
            return false;
        };
        pkt.header.ssrc = s.ssrc;
        pkt.header.payload_type = pt;
        let sender = s.sender;
        match self.pc.rtp_sender(sender) {
            Some(mut tx) => tx.write_rtp(now, pkt).is_ok(),
            None => false,
        }
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
    pub fn describe_receiver(
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
        let rtp = track.codec(ssrc)?.clone();
        let payload_type = params
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&rtp.mime_type))
            .map_or(0, |c| c.payload_type);
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

    /// Subscriber: sends a chat frame if the channel is open and not backed up.
    pub fn send_chat(&mut self, text: &str, now: Instant, max_outstanding: usize) -> ChatSend {
        let Some((id, true)) = self.chat else {
            return ChatSend::NotOpen;
        };
        let Some(mut dc) = self.pc.data_channel(id) else {
            return ChatSend::NotOpen;
        };
        if dc.outstanding_bytes() > max_outstanding {
            return ChatSend::Dropped;
        }
        match dc.send_text(now, text) {
            Ok(()) => ChatSend::Sent,
            Err(_) => ChatSend::Dropped,
        }
    }

    /// Closes the connection; the caller flushes `poll_write` once more to send the
    /// DTLS close and SCTP abort.
    pub fn close(&mut self) {
        let _ = self.pc.close();
    }
}

/// Registry slot of [`FeedbackTap`]: after every built-in interceptor (application-ward).
const FEEDBACK_TAP_SLOT: usize = 14_000;

/// Marks keyframe requests (PLI, FIR), receiver reports and sender reports for delivery to
/// the application. Inbound RTCP otherwise stops at the end of the interceptor chain; the
/// worker relays subscribers' keyframe requests to the publisher, estimates bandwidth
/// from the loss their receiver reports carry, and gives publishers' sender reports (the
/// RTP-to-wall-clock mapping) to recordings.
#[derive(Default)]
struct FeedbackTap {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

/// The RTCP the worker acts on.
fn wanted_rtcp(any: &dyn std::any::Any) -> bool {
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::rtcp::sender_report::SenderReport;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
    any.is::<PictureLossIndication>()
        || any.is::<FullIntraRequest>()
        || any.is::<ReceiverReport>()
        || any.is::<SenderReport>()
        || any.is::<TransportLayerNack>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let InterceptorPacket::Rtcp(packets) = &msg.message.packet
            && packets.iter().any(|p| wanted_rtcp(p.as_any()))
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for FeedbackTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatSend {
    Sent,
    NotOpen,
    Dropped,
}

/// Follows the client's nominated path.
///
/// The rtc 0.21 ICE-lite agent keeps the first nominated candidate pair forever and judges
/// consent on it alone. A browser with two interfaces may nominate another pair later and
/// refresh consent only there: the agent then declares the connection failed while media
/// flows, and keeps sending to a path the client left. So the agent is always shown the
/// first path (every authenticated datagram from another path is presented as coming from
/// it, and the answers to STUN requests go back where they came from), while media goes to
/// the path the client nominated last.
#[derive(Debug, Default, Clone)]
pub struct Paths {
    primary: Option<SocketAddr>,
    active: Option<SocketAddr>,
    pending_nomination: Option<SocketAddr>,
    /// STUN requests received on another path: where their answers go (transaction id).
    answers: VecDeque<([u8; 12], SocketAddr)>,
}

fn stun_transaction(buf: &[u8]) -> Option<[u8; 12]> {
    buf.get(8..20)?.try_into().ok()
}

fn stun_use_candidate(buf: &[u8]) -> bool {
    use rtc::stun::attributes::ATTR_USE_CANDIDATE;
    use rtc::stun::message::Message;
    let mut m = Message::new();
    m.raw = buf.to_vec();
    m.decode().is_ok() && m.contains(ATTR_USE_CANDIDATE)
}

impl Paths {
    /// The address to present to the agent for a datagram from `from`. `authenticated`:
    /// `from` already passed an ICE check for this peer.
    pub fn inbound(&mut self, data: &[u8], from: SocketAddr, authenticated: bool) -> SocketAddr {
        let stun = is_stun(data);
        let nominates = stun && stun_use_candidate(data);
        let Some(primary) = self.primary else {
            if nominates {
                self.pending_nomination = Some(from);
            }
            return from;
        };
        if from == primary {
            if nominates {
                self.active = Some(from);
            }
            return from;
        }
        if !authenticated {
            if nominates {
                self.pending_nomination = Some(from);
            }
            return from;
        }
        if nominates {
            self.active = Some(from);
        }
        if stun && let Some(tx) = stun_transaction(data) {
            if self.answers.len() >= 32 {
                self.answers.pop_front();
            }
            self.answers.push_back((tx, from));
        }
        primary
    }

    /// The agent accepted a check from `to`.
    pub fn accepted(&mut self, to: SocketAddr) {
        if self.primary.is_none() {
            self.primary = Some(to);
            self.active = Some(to);
        }
        if self.pending_nomination == Some(to) {
            self.pending_nomination = None;
            self.active = Some(to);
        }
    }

    /// Where to send a datagram the agent addressed to `to`.
    pub fn outbound(&mut self, data: &[u8], to: SocketAddr) -> SocketAddr {
        if Some(to) != self.primary {
            return to;
        }
        if is_stun(data)
            && let Some(tx) = stun_transaction(data)
            && let Some(i) = self.answers.iter().position(|(t, _)| *t == tx)
        {
            return self.answers.remove(i).map_or(to, |(_, a)| a);
        }
        self.active.unwrap_or(to)
    }
}

/// Whether a datagram is a STUN message (RFC 7983 demultiplexing: first byte 0..=3).
pub fn is_stun(buf: &[u8]) -> bool {
    buf.len() >= 20 && buf[0] < 4 && buf[4..8] == [0x21, 0x12, 0xA4, 0x42]
}

/// The local ufrag a STUN binding request is addressed to: USERNAME is
/// `<receiver ufrag>:<sender ufrag>` (RFC 8445 §7.2.2).
pub fn stun_target_ufrag(buf: &[u8]) -> Option<String> {
    use rtc::stun::attributes::ATTR_USERNAME;
    use rtc::stun::message::Message;
    let mut m = Message::new();
    m.raw = buf.to_vec();
    m.decode().ok()?;
    let (v, _) = m.attributes.get(ATTR_USERNAME);
    let s = std::str::from_utf8(&v.value).ok()?;
    let local = s.split(':').next()?;
    (!local.is_empty()).then(|| local.to_owned())
}

/// Whether an outgoing datagram is a STUN binding success response: the agent accepted
/// a check from that address (integrity verified), so it may be routed to this peer.
pub fn is_binding_success(buf: &[u8]) -> bool {
    is_stun(buf) && buf[0] == 0x01 && buf[1] == 0x01
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_classification() {
        let mut req = vec![0u8; 20];
        req[0] = 0x00;
        req[1] = 0x01;
        req[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        assert!(is_stun(&req));
        assert!(!is_binding_success(&req));
        req[0] = 0x01;
        assert!(is_binding_success(&req));
        // DTLS record
        assert!(!is_stun(&[22u8; 40]));
        // too short
        assert!(!is_stun(&[0u8; 8]));
    }

    fn binding_request(tx: &[u8; 12], use_candidate: bool) -> Vec<u8> {
        use rtc::stun::message::{BINDING_REQUEST, Message, TransactionId};
        let mut m = Message::new();
        let mut setters: Vec<Box<dyn rtc::stun::message::Setter>> =
            vec![Box::new(BINDING_REQUEST), Box::new(TransactionId(*tx))];
        if use_candidate {
            setters.push(Box::new(
                rtc::ice::attributes::use_candidate::UseCandidateAttr,
            ));
        }
        m.build(&setters).unwrap();
        m.raw
    }

    #[test]
    fn paths_follow_the_latest_nomination() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:2000".parse().unwrap();
        let media = [0x80u8; 40];
        let mut p = Paths::default();
        // First path: nominated, accepted, shown as is.
        assert_eq!(p.inbound(&binding_request(&[1; 12], true), a, false), a);
        p.accepted(a);
        assert_eq!(p.outbound(&media, a), a);
        // A second path checks (not yet accepted): passed through, answered directly.
        assert_eq!(p.inbound(&binding_request(&[2; 12], false), b, false), b);
        p.accepted(b);
        assert_eq!(p.outbound(&media, a), a, "not nominated: media stays");
        // It is nominated: the agent still sees the first path, media moves to the second,
        // and the answer to that request goes back to the second.
        let req = binding_request(&[3; 12], true);
        assert_eq!(p.inbound(&req, b, true), a);
        let mut answer = req.clone();
        answer[0] = 0x01;
        answer[1] = 0x01;
        assert_eq!(p.outbound(&answer, a), b);
        assert_eq!(p.outbound(&media, a), b);
        // Datagrams on the second path are presented as the first.
        assert_eq!(p.inbound(&media, b, true), a);
        // Nominating the first again moves media back.
        assert_eq!(p.inbound(&binding_request(&[4; 12], true), a, true), a);
        assert_eq!(p.outbound(&media, a), a);
    }

    #[test]
    fn stun_username_is_parsed() {
        use rtc::stun::message::{BINDING_REQUEST, Message, TransactionId};
        use rtc::stun::textattrs::Username;
        let mut m = Message::new();
        m.build(&[
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(Username::new(
                rtc::stun::attributes::ATTR_USERNAME,
                "serverfrag:clientfrag".into(),
            )),
        ])
        .unwrap();
        assert_eq!(stun_target_ufrag(&m.raw).as_deref(), Some("serverfrag"));
        assert_eq!(stun_target_ufrag(&[0u8; 3]), None);
    }

    #[test]
    fn a_garbage_stun_username_is_no_target() {
        assert_eq!(stun_target_ufrag(&[0xffu8; 64]), None);
    }
}
