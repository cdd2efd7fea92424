//! Building peer connections: codecs, header extensions, interceptors and ICE-lite
//! settings per role, and the tap that hands the worker the RTCP it acts on.

use super::{Paths, Peer, Role};
use crate::error::PeerError;
use crate::keys::{ParticipantKey, RoomKey};
use rtc::interceptor::{
    Attribute, Interceptor, NackGeneratorBuilder, Packet as InterceptorPacket,
    ReceiverReportBuilder, Registry, Slot, StreamInfo, TaggedPacket, TwccReceiverBuilder,
};
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_RTX, MIME_TYPE_VP8, MIME_TYPE_VP9, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
    /// ICE-TCP: the port of the worker's TCP listener (a passive TCP candidate is
    /// offered on the announced IP), if it listens.
    pub tcp_port: Option<u16>,
}

impl PeerFactory {
    pub fn build(
        &self,
        role: Role,
        participant: ParticipantKey,
        room: RoomKey,
    ) -> Result<Peer, PeerError> {
        let mut media = MediaEngine::default();
        register_codecs(&mut media)?;

        let mut registry = Registry::new();
        let twcc_inbox = TwccInbox::default();
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
                // No NACK responder and no sender reports: the down-tracks' egress
                // (crate::egress) keeps their history and reports per stream, and numbers
                // every packet for transport-wide feedback (crate::twcc).
                registry = registry.with(
                    Slot::from(FEEDBACK_TAP_SLOT),
                    FeedbackTap {
                        twcc: Some(twcc_inbox.clone()),
                        ..Default::default()
                    },
                );
                register_rtx(&mut media)?;
                for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
                    media
                        .register_header_extension(
                            rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                                uri: rtc::sdp::extmap::TRANSPORT_CC_URI.to_owned(),
                            },
                            kind,
                            None,
                        )
                        .map_err(PeerError::rtc)?;
                }
            }
        }

        let settings = SettingEngineBuilder::new()
            .with_lite(true)
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
            room,
            ufrag: String::new(),
            ufrag_changed: None,
            tcp_port: self.tcp_port,
            addrs: Vec::new(),
            paths: Paths::default(),
            connected: false,
            timer: None,
            received: HashMap::new(),
            senders: Vec::new(),
            chat,
            egress: Default::default(),
            cc: None,
            twcc_inbox,
            pacer: crate::pacer::PacedQueue::new(crate::bwe::BweConfig::default().initial_bps),
            prober: None,
            probe_back: 0,
            scratch: Vec::new(),
            rtt: None,
            keys: None,
            out: Default::default(),
            pending: Default::default(),
        })
    }
}

/// RFC 2198 redundant audio, as browsers name it.
pub(super) const MIME_TYPE_RED: &str = "audio/red";

fn register_codecs(media: &mut MediaEngine) -> Result<(), PeerError> {
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
                vec![RTCPFeedback {
                    typ: "transport-cc".into(),
                    parameter: "".into(),
                }],
                111,
            ),
            RtpCodecKind::Audio,
        )
        .map_err(PeerError::rtc)?;
    // RED after Opus. A subscriber that answers with it gets RED made from the publisher's
    // Opus (`rtp::red`). A publisher's offer is reordered to put RED first
    // (`sdp::with_red_first`), which is what makes a browser send it; it is made plain
    // Opus again as it arrives, so every subscriber, recording and relay gets one format.
    media
        .register_codec(
            codec(MIME_TYPE_RED, 48000, 2, "111/111", Vec::new(), 63),
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

/// RTX (RFC 4588) for each video codec, on subscriber connections only: the egress sends
/// probe clusters on it (`crate::probe`). Publishers are not offered it (their
/// retransmissions come on the media SSRC, which the ingest expects).
fn register_rtx(media: &mut MediaEngine) -> Result<(), PeerError> {
    for (pt, apt) in [(97u8, 96u8), (99, 98), (103, 102)] {
        media
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: RTCRtpCodec {
                        mime_type: MIME_TYPE_RTX.to_owned(),
                        clock_rate: 90000,
                        channels: 0,
                        sdp_fmtp_line: format!("apt={apt}"),
                        rtcp_feedback: Vec::new(),
                    },
                    payload_type: pt,
                },
                RtpCodecKind::Video,
            )
            .map_err(PeerError::rtc)?;
    }
    Ok(())
}

/// Registry slot of [`FeedbackTap`]: after every built-in interceptor (application-ward).
const FEEDBACK_TAP_SLOT: usize = 14_000;

/// Marks keyframe requests (PLI, FIR), NACKs, receiver reports and sender reports for
/// delivery to the application, and takes transport-wide feedback out ([`TwccInbox`]). Inbound RTCP otherwise stops at the end
/// of the interceptor chain; the worker relays subscribers' keyframe requests to the
/// publisher, answers their NACKs, estimates their bandwidth from transport-wide feedback
/// (or the loss their receiver reports carry), and gives publishers' sender reports (the
/// RTP-to-wall-clock mapping) to recordings.
#[derive(Default)]
struct FeedbackTap {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
    /// Subscriber: where transport-wide feedback goes instead (see [`TwccInbox`]).
    twcc: Option<TwccInbox>,
}

/// Transport-wide feedback packets taken out of a subscriber connection's interceptor
/// chain, with when they arrived, for [`super::Peer::poll_event`]. The tap cannot hand them
/// to the application like the other RTCP: `rtc` routes an RTCP compound packet to a track
/// by its first packet's SSRC and drops it without one (Chromium's feedback can follow an
/// empty receiver report). A mutex because the chain must be `Send`; the worker's thread
/// is the only one that takes it.
#[derive(Clone, Default)]
pub(crate) struct TwccInbox(
    std::sync::Arc<
        std::sync::Mutex<
            VecDeque<(
                Instant,
                rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc,
            )>,
        >,
    >,
);

/// At most this many feedback packets wait (a worker that fell behind drops the oldest).
const TWCC_INBOX_MAX: usize = 64;

impl TwccInbox {
    fn push(
        &self,
        at: Instant,
        fb: rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc,
    ) {
        let mut q = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() >= TWCC_INBOX_MAX {
            q.pop_front();
        }
        q.push_back((at, fb));
    }

    pub(crate) fn take(
        &self,
    ) -> Option<(
        Instant,
        rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc,
    )> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front()
    }
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
        use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
        if let (Some(inbox), InterceptorPacket::Rtcp(packets)) =
            (&self.twcc, &mut msg.message.packet)
            && packets.iter().any(|p| p.as_any().is::<TransportLayerCc>())
        {
            packets.retain(|p| match p.as_any().downcast_ref::<TransportLayerCc>() {
                Some(fb) => {
                    inbox.push(msg.now, fb.clone());
                    false
                }
                None => true,
            });
        }
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
