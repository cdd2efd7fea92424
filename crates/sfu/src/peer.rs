//! The only module that touches the webrtc-rs `rtc` core (with [`crate::worker`], which
//! owns the socket). A [`Peer`] is one sans-IO `RTCPeerConnection` plus what the worker
//! needs to route datagrams to it and media out of it.
//!
//! Every peer connection on a worker shares one UDP socket, so each is built as an
//! ICE-lite agent with a unique username fragment (how the worker demultiplexes STUN) and
//! its host candidates: the worker's announced address over UDP and, with ICE-TCP, TCP.
//!
//! Publisher connections (the client offers) receive; subscriber connections (the server
//! offers) send and carry the chat data channel. The two get different interceptors:
//! a receiver needs NACK generation, receiver reports and transport-wide CC feedback for
//! the browser's bandwidth estimate; a sender needs a retransmission buffer and sender
//! reports.

mod codec;
mod down;
mod factory;
mod paths;
mod up;

pub use codec::TrackCodec;
pub use down::{SenderSlot, Written};
pub use factory::PeerFactory;
pub use paths::{Paths, is_binding_success, is_stun, stun_target_ufrag};
pub use up::ReceivedTrack;

use crate::egress::LocalKeys;
use crate::error::PeerError;
use crate::keys::{ParticipantKey, RoomKey, TrackKey};
use confab_proto::{IceCandidate, MediaKind, TrackId};
use rtc::ice::tcp_type::TcpType;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::RTCRtpReceiverId;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Subscriber,
}

/// What happened on a peer connection, in the worker's terms.
#[derive(Debug)]
pub enum PeerEvent {
    /// ICE connected (the DTLS flight should leave at once).
    IceConnected,
    Connected,
    Disconnected,
    Failed,
    /// Publisher: a track (or one more encoding of one) opened.
    TrackOpened(Opened),
    /// Publisher: a track closed: the room's track it fed.
    TrackClosed(TrackKey),
    /// Subscriber: the chat channel opened.
    ChatOpen,
    /// Publisher: an RTP packet of a room track.
    Rtp(TrackKey, rtc::rtp::Packet),
    /// Publisher: what made a RED packet plain Opus did beyond that (packets restored,
    /// or the packet dropped as malformed); before the packets it handed on.
    Red(crate::rtp::red::Decoded),
    /// Subscriber: feedback about the down-track of a room track (its id on the wire).
    Feedback(TrackId, RtcpSummary),
    /// Publisher: a sender report of one of its encodings.
    SenderReport {
        ssrc: u32,
        ntp: u64,
        rtp_ts: u32,
    },
    /// Subscriber: a chat frame.
    Chat(bytes::BytesMut),
    /// Subscriber: transport-wide feedback, and what it says about the path (`None` when
    /// it named nothing new).
    TransportFeedback(Option<crate::twcc::CcSignal>),
}

/// A track that opened on a publisher connection.
#[derive(Debug)]
pub enum Opened {
    /// Its first encoding.
    New {
        rtc_id: String,
        receiver: RTCRtpReceiverId,
        ssrc: u32,
        rid: Option<String>,
        codec: TrackCodec,
        kind: MediaKind,
        mid: Option<String>,
        audio_level_ext: Option<u8>,
    },
    /// One more simulcast encoding of a track already open.
    Layer {
        track: TrackKey,
        rid: Option<String>,
        ssrc: u32,
    },
}

/// The RTCP the worker acts on, from one compound packet of a subscriber.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtcpSummary {
    pub keyframe: bool,
    pub nacks: u32,
    /// Packets sent again for those NACKs.
    pub retransmitted: u32,
    pub worst_loss: Option<u8>,
    pub rtt: Option<Duration>,
}

pub struct Peer {
    pc: RTCPeerConnection,
    pub role: Role,
    pub participant: ParticipantKey,
    pub room: RoomKey,
    /// The local ICE username fragment, from the last local description (the agent draws
    /// it, and a new one at each ICE restart): STUN requests are routed to the peer by it.
    pub ufrag: String,
    /// The ufrag it replaced, until the worker re-routes ([`Peer::take_ufrag_change`]).
    ufrag_changed: Option<String>,
    /// The worker's ICE-TCP port, offered as a passive candidate.
    pub tcp_port: Option<u16>,
    /// Remote addresses that passed an ICE check: where datagrams come from and go to.
    pub addrs: Vec<SocketAddr>,
    /// Which of them the agent is shown, and which one media goes to.
    pub paths: Paths,
    pub connected: bool,
    /// The deadline registered in the worker's timer set.
    pub timer: Option<Instant>,
    /// Publisher: rtc track id -> the track it feeds.
    received: HashMap<String, ReceivedTrack>,
    /// Subscriber: the down-track slots, indexed by `DownTrack::slot`.
    senders: Vec<Option<SenderSlot>>,
    /// Subscriber: the chat data channel, and whether it is open.
    chat: Option<(usize, bool)>,
    /// Subscriber: what is sent toward it (for its bandwidth estimate).
    pub egress: crate::bwe::RateMeter,
    /// Subscriber: transport-wide sequence numbers and the delay signal, once its answer
    /// negotiated the extension.
    cc: Option<crate::twcc::TransportCc>,
    /// Subscriber: transport-wide feedback taken out of the interceptor chain by the tap
    /// (rtc routes RTCP to a track by the first packet's SSRC, which a compound packet
    /// starting with an empty receiver report does not have).
    pub(crate) twcc_inbox: factory::TwccInbox,
    /// Subscriber: forwarded video beyond the pacing rate, waiting.
    pacer: crate::pacer::PacedQueue<down::PacedRtp>,
    /// Subscriber: the probe cluster being sent, and how far back its next copy is taken.
    prober: Option<crate::probe::Prober>,
    probe_back: u16,
    /// Reused for packets protected outside the worker's forwarding pass (paced releases,
    /// retransmissions): the packet before encryption.
    scratch: Vec<u8>,
    /// Subscriber: the round trip its last receiver report showed.
    rtt: Option<Duration>,
    /// Subscriber: the keys its down-tracks are protected with, once DTLS completed.
    keys: Option<LocalKeys>,
    /// Subscriber: retransmissions and sender reports waiting for the next flush.
    out: std::collections::VecDeque<bytes::Bytes>,
    /// Events translated but not yet taken.
    pending: std::collections::VecDeque<PeerEvent>,
}

impl Peer {
    /// Adds the worker's host candidates (UDP, and a passive TCP one when the worker
    /// listens on TCP) and the end-of-candidates marker, so that they are in the next local
    /// description. The TCP candidate has the lower priority (RFC 6544 type preference):
    /// clients use it only when UDP fails.
    fn add_host_candidate(&mut self, announce: SocketAddr) -> Result<(), PeerError> {
        let tcp = self.tcp_port.map(|port| ("tcp", port, TcpType::Passive));
        for (network, port, tcp_type) in
            std::iter::once(("udp", announce.port(), TcpType::Unspecified)).chain(tcp)
        {
            let candidate = CandidateHostConfig {
                base_config: CandidateConfig {
                    network: network.to_owned(),
                    address: announce.ip().to_string(),
                    port,
                    component: 1,
                    ..Default::default()
                },
                tcp_type,
            }
            .new_candidate_host()
            .map_err(PeerError::rtc)?;
            let init = RTCIceCandidate::from(&candidate)
                .to_json()
                .map_err(PeerError::rtc)?;
            self.pc.add_local_candidate(init).map_err(PeerError::rtc)?;
        }
        self.pc
            .add_local_candidate(RTCIceCandidateInit::default())
            .map_err(PeerError::rtc)?;
        Ok(())
    }

    /// Subscriber: creates an offer for the current set of down-tracks; `restart_ice`:
    /// with fresh ICE credentials (the client asked, its network changed).
    pub fn create_offer(
        &mut self,
        announce: SocketAddr,
        restart_ice: bool,
    ) -> Result<String, PeerError> {
        let first = self.pc.local_description().is_none();
        if restart_ice && !first {
            self.pc.restart_ice();
        }
        let offer = self.pc.create_offer(None).map_err(PeerError::rtc)?;
        self.pc
            .set_local_description(Instant::now(), offer)
            .map_err(PeerError::rtc)?;
        if first {
            self.add_host_candidate(announce)?;
        }
        self.noted_local_sdp()
    }

    /// The local description just set, after learning its ufrag. A new ufrag after the
    /// first is an ICE restart (ours, or the client's offer restarted and rtc answered with
    /// new credentials): the agent forgot its candidate pairs and is gathering again (it
    /// keeps its host candidates), so the paths start over and the end of candidates is
    /// said again.
    fn noted_local_sdp(&mut self) -> Result<String, PeerError> {
        let sdp = self.local_sdp()?;
        let Some(u) = crate::sdp::ice_ufrag(&sdp) else {
            return Ok(sdp);
        };
        if u == self.ufrag {
            return Ok(sdp);
        }
        let old = std::mem::replace(&mut self.ufrag, u.to_owned());
        let restarted = !old.is_empty();
        self.ufrag_changed = Some(old);
        if !restarted {
            return Ok(sdp);
        }
        self.paths.restart();
        self.pc
            .add_local_candidate(RTCIceCandidateInit::default())
            .map_err(PeerError::rtc)?;
        self.local_sdp()
    }

    /// The ufrag replaced since the last call (empty: the first one), for re-routing.
    pub fn take_ufrag_change(&mut self) -> Option<String> {
        self.ufrag_changed.take()
    }

    fn local_sdp(&self) -> Result<String, PeerError> {
        self.pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| PeerError::Rtc("no local description".into()))
    }

    /// Subscriber: applies the client's answer, then learns the payload types of each
    /// down-track it answered (a slot added after the offer was made waits for the next
    /// one: read from this answer it would get the codecs without what the answer to its
    /// own section adds, RTX).
    pub fn apply_answer(&mut self, sdp: String) -> Result<(), PeerError> {
        let answered: Vec<String> = crate::sdp::media_sections(&sdp)
            .into_iter()
            .map(|s| s.mid)
            .collect();
        let answer = RTCSessionDescription::answer(sdp).map_err(PeerError::sdp)?;
        self.pc
            .set_remote_description(Instant::now(), answer)
            .map_err(PeerError::sdp)?;
        let mut twcc_id = None;
        for slot in self.senders.iter_mut().flatten() {
            let in_answer = self
                .pc
                .rtp_transceiver(slot.sender.into())
                .and_then(|t| t.mid().clone())
                .is_some_and(|mid| answered.contains(&mid));
            let Some(mut sender) = self.pc.rtp_sender(slot.sender) else {
                continue;
            };
            let params = &sender.get_parameters().rtp_parameters;
            twcc_id = twcc_id.or(params
                .header_extensions
                .iter()
                .find(|e| e.uri == rtc::sdp::extmap::TRANSPORT_CC_URI)
                .and_then(|e| u8::try_from(e.id).ok())
                .filter(|id| (1..=14).contains(id)));
            if slot.payload_type.is_none() && in_answer {
                let pt = |mime: &str| codec::by_mime(&params.codecs, mime).map(|c| c.payload_type);
                slot.payload_type = pt(&slot.mime);
                if slot.mime.eq_ignore_ascii_case(MIME_TYPE_OPUS) {
                    slot.red_payload_type = pt(factory::MIME_TYPE_RED);
                }
                if slot.rtx_ssrc.is_some()
                    && let Some(apt) = slot.payload_type
                {
                    slot.rtx_payload_type = codec::rtx_for(&params.codecs, apt);
                }
            }
        }
        if let Some(id) = twcc_id
            && self.cc.as_ref().is_none_or(|cc| cc.ext_id() != id)
        {
            self.cc = Some(crate::twcc::TransportCc::new(id));
        }
        self.open_streams();
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

    /// The mids of the connection's transceivers.
    pub fn mids(&mut self) -> Vec<String> {
        let ids: Vec<_> = self.pc.get_transceivers().collect();
        ids.into_iter()
            .filter_map(|id| self.pc.rtp_transceiver(id).and_then(|t| t.mid().clone()))
            .collect()
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

    /// One datagram (or ICE-TCP frame, `tcp`) from `shown`, received at `local`.
    pub fn handle_datagram(
        &mut self,
        data: &[u8],
        local: SocketAddr,
        shown: SocketAddr,
        tcp: bool,
        now: Instant,
    ) {
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: local,
                peer_addr: shown,
                ecn: None,
                transport_protocol: if tcp {
                    TransportProtocol::TCP
                } else {
                    TransportProtocol::UDP
                },
            },
            message: bytes::BytesMut::from(data),
        };
        if let Err(e) = self.pc.handle_read(msg) {
            tracing::trace!(error = %e, "handle_read");
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Err(e) = self.pc.handle_timeout(now) {
            tracing::trace!(error = %e, "handle_timeout");
        }
        self.release_paced(now);
        self.send_probes(now);
    }

    /// The next datagram to send, and where it goes: first what the agent addressed
    /// (`to` is the agent's view: pass it through [`Paths::outbound`]), then the egress's
    /// retransmissions and reports (`to` is the media path already).
    pub fn poll_write(&mut self) -> Option<Outgoing> {
        if let Some(out) = self.pc.poll_write() {
            return Some(Outgoing::Agent(
                out.message.freeze(),
                out.transport.peer_addr,
            ));
        }
        let to = self.paths.media()?;
        let d = self.out.pop_front()?;
        Some(Outgoing::Media(d, to))
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        [
            self.pc.poll_timeout(),
            self.pacer.next_release(),
            self.prober.as_ref().map(crate::probe::Prober::next_at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next thing that happened on the connection: state changes and track events
    /// first, then received media, RTCP and chat.
    pub fn poll_event(&mut self, now: Instant) -> Option<PeerEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if let Some((at, fb)) = self.twcc_inbox.take() {
                let signal = self.cc.as_mut().and_then(|cc| cc.on_feedback(&fb, at));
                return Some(PeerEvent::TransportFeedback(signal));
            }
            if let Some(ev) = self.pc.poll_event() {
                self.translate(ev, now);
                continue;
            }
            let TaggedRTCMessage { message, .. } = self.pc.poll_read()?;
            match message {
                RTCMessage::RtpPacket(track_id, pkt) if self.role == Role::Publisher => {
                    if let Some(ev) = self.received_rtp(&track_id, pkt) {
                        return Some(ev);
                    }
                }
                RTCMessage::RtcpPacket(track_id, pkts) => self.rtcp(track_id, &pkts),
                RTCMessage::DataChannelMessage(_, msg) if self.role == Role::Subscriber => {
                    return Some(PeerEvent::Chat(msg.data));
                }
                _ => {}
            }
        }
    }

    fn translate(&mut self, ev: RTCPeerConnectionEvent, now: Instant) {
        let out = match ev {
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                RTCIceConnectionState::Connected,
            ) => {
                // When this side is the DTLS client, its first flight is queued until the
                // next timer (up to ~200 ms away): run the timers now so it leaves at once.
                self.handle_timeout(now);
                PeerEvent::IceConnected
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                tracing::debug!(role = ?self.role, %state, "connection state");
                match state {
                    RTCPeerConnectionState::Connected => {
                        self.connected = true;
                        if self.role == Role::Subscriber && self.keys.is_none() {
                            self.keys = self.pc.export_srtp_keys().map(|(p, k)| {
                                LocalKeys::new(p, k.local_master_key, k.local_master_salt)
                            });
                            tracing::debug!(keys = ?self.keys, "subscriber SRTP");
                            self.open_streams();
                        }
                        PeerEvent::Connected
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        self.connected = false;
                        PeerEvent::Failed
                    }
                    RTCPeerConnectionState::Disconnected => {
                        self.connected = false;
                        PeerEvent::Disconnected
                    }
                    _ => return,
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init))
                if self.role == Role::Publisher =>
            {
                if let Some(rt) = self.received.get(&init.track_id) {
                    if init.rid.is_none() && rt.media_ssrc == init.ssrc {
                        // Renegotiation re-announces tracks already open.
                        return;
                    }
                    PeerEvent::TrackOpened(Opened::Layer {
                        track: rt.track,
                        rid: init.rid,
                        ssrc: init.ssrc,
                    })
                } else {
                    let Some((codec, kind, mid, audio_level_ext)) =
                        self.describe_receiver(init.receiver_id, init.ssrc)
                    else {
                        return;
                    };
                    PeerEvent::TrackOpened(Opened::New {
                        rtc_id: init.track_id,
                        receiver: init.receiver_id,
                        ssrc: init.ssrc,
                        rid: init.rid,
                        codec,
                        kind,
                        mid,
                        audio_level_ext,
                    })
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id))
                if self.role == Role::Publisher =>
            {
                match self.received.remove(&track_id) {
                    Some(rt) => PeerEvent::TrackClosed(rt.track),
                    None => return,
                }
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id))
                if self.role == Role::Subscriber =>
            {
                match self.chat.as_mut() {
                    Some((chat_id, open)) if *chat_id == id => {
                        *open = true;
                        PeerEvent::ChatOpen
                    }
                    _ => return,
                }
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnClose(id))
                if self.role == Role::Subscriber =>
            {
                if let Some((chat_id, open)) = self.chat.as_mut()
                    && *chat_id == id
                {
                    *open = false;
                }
                return;
            }
            _ => return,
        };
        self.pending.push_back(out);
    }

    /// Reads what the worker acts on out of one compound RTCP packet.
    fn rtcp(&mut self, track_id: String, pkts: &[Box<dyn rtc::rtcp::Packet>]) {
        use rtc::rtcp::receiver_report::ReceiverReport;
        use rtc::rtcp::sender_report::SenderReport;
        use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
        if self.role == Role::Publisher {
            for p in pkts {
                if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                    self.pending.push_back(PeerEvent::SenderReport {
                        ssrc: sr.ssrc,
                        ntp: sr.ntp_time,
                        rtp_ts: sr.rtp_time,
                    });
                }
            }
            return;
        }
        let mut sum = RtcpSummary::default();
        for p in pkts {
            let any = p.as_any();
            if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                sum.keyframe = true;
            } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                sum.nacks += 1;
                sum.retransmitted += self.retransmit(nack.media_ssrc, nack);
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                for r in &rr.reports {
                    sum.worst_loss = Some(sum.worst_loss.unwrap_or(0).max(r.fraction_lost));
                    let now_ntp = crate::bwe::ntp_time(std::time::SystemTime::now());
                    if let Some(rtt) =
                        crate::bwe::rtt_from_report(now_ntp, r.last_sender_report, r.delay)
                    {
                        sum.rtt = Some(rtt);
                        self.rtt = Some(rtt);
                    }
                }
            }
        }
        if sum != RtcpSummary::default() {
            self.pending
                .push_back(PeerEvent::Feedback(TrackId::from_wire(&track_id), sum));
        }
    }

    /// Closes the connection; the caller flushes `poll_write` once more to send the
    /// DTLS close and SCTP abort.
    pub fn close(&mut self) {
        let _ = self.pc.close();
    }
}

/// A datagram a peer has for the network.
#[derive(Debug)]
pub enum Outgoing {
    /// From the agent (ICE, DTLS, SCTP, RTCP), addressed as it sees the remote.
    Agent(bytes::Bytes, SocketAddr),
    /// From the egress (retransmissions, sender reports), on the media path.
    Media(bytes::Bytes, SocketAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatSend {
    Sent,
    NotOpen,
    Dropped,
}
