//! The client's webrtc-rs peer connections: codecs, the media engine, event handling.

#[allow(unused_imports)]
use super::*;

pub(super) const OPUS_PT: u8 = 111;
pub(super) const VP8_PT: u8 = 96;
/// `audio/red` (RFC 2198), as Chromium numbers it.
pub const RED_PT: u8 = 63;
/// RTX for VP8 (RFC 4588).
pub(super) const RTX_PT: u8 = 97;

pub(super) fn media_engine() -> anyhow::Result<MediaEngine> {
    let mut m = MediaEngine::default();
    use rtc::sdp::extmap;
    for (uri, kind) in [
        (extmap::SDES_MID_URI, RtpCodecKind::Video),
        (extmap::SDES_RTP_STREAM_ID_URI, RtpCodecKind::Video),
        (extmap::SDES_MID_URI, RtpCodecKind::Audio),
        (extmap::AUDIO_LEVEL_URI, RtpCodecKind::Audio),
    ] {
        m.register_header_extension(
            rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                uri: uri.to_owned(),
            },
            kind,
            None,
        )?;
    }
    m.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: "audio/opus".into(),
                clock_rate: 48000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
                rtcp_feedback: vec![],
            },
            payload_type: OPUS_PT,
        },
        RtpCodecKind::Audio,
    )?;
    m.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: vp8_codec(),
            payload_type: VP8_PT,
        },
        RtpCodecKind::Video,
    )?;
    // RTX, as browsers accept it: the server's probe clusters come on it.
    m.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: "video/rtx".into(),
                clock_rate: 90000,
                channels: 0,
                sdp_fmtp_line: format!("apt={VP8_PT}"),
                rtcp_feedback: vec![],
            },
            payload_type: RTX_PT,
        },
        RtpCodecKind::Video,
    )?;
    Ok(m)
}

pub(super) fn vp8_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "video/VP8".into(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![
            RTCPFeedback {
                typ: "nack".into(),
                parameter: String::new(),
            },
            RTCPFeedback {
                typ: "nack".into(),
                parameter: "pli".into(),
            },
        ],
    }
}

pub(super) fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".into(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
        rtcp_feedback: vec![],
    }
}

pub(super) async fn build_pc(
    handler: Arc<dyn PeerConnectionEventHandler>,
    tap: bool,
    bind_ip: std::net::IpAddr,
    tcp: bool,
    twcc: bool,
    red: bool,
) -> anyhow::Result<Pc> {
    let mut media = media_engine()?;
    if red {
        media.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: "audio/red".into(),
                    clock_rate: 48000,
                    channels: 2,
                    sdp_fmtp_line: format!("{OPUS_PT}/{OPUS_PT}"),
                    rtcp_feedback: vec![],
                },
                payload_type: RED_PT,
            },
            RtpCodecKind::Audio,
        )?;
    }
    let mut registry = Registry::new();
    if twcc {
        for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
            media.register_header_extension(
                rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                    uri: rtc::sdp::extmap::TRANSPORT_CC_URI.to_owned(),
                },
                kind,
                None,
            )?;
        }
        registry = registry.with(
            rtc::interceptor::Slot::TwccReceiver,
            rtc::interceptor::TwccReceiverBuilder::new().build(),
        );
    }
    registry = configure_nack(registry, &mut media);
    registry = configure_rtcp_reports(registry);
    if tap {
        registry = registry.with(rtc::interceptor::Slot::from(14_000), KeyframeTap::default());
    }
    // Behave like a browser: answer as the DTLS client (setup:active) and send the first
    // ICE checks at once rather than after the default 200 ms interval.
    let settings = webrtc::peer_connection::SettingEngineBuilder::new()
        .with_answering_dtls_role(rtc::peer_connection::transport::RTCDtlsRole::Client)
        .with_ice_connection_attempts(Some(Duration::from_millis(20)), Some(50))
        // An ICE restart rebinds the sockets (new local ports), as a move to another
        // network would: the server must follow the client to its new address.
        .with_discard_local_candidates_during_ice_restart(true)
        // As browsers: a retransmission arriving a few hundred packets late (behind a
        // queue) is still accepted.
        .with_srtp_replay_protection_window(1024)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(if tcp {
            vec![]
        } else {
            vec![format!("{bind_ip}:0")]
        })
        .with_tcp_addrs(if tcp {
            vec![format!("{bind_ip}:0")]
        } else {
            vec![]
        })
        .build()
        .await?;
    Ok(Arc::new(pc))
}

pub(super) struct PcHandler {
    pub(super) target: PcTarget,
    pub(super) shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PcHandler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            self.shared
                .local_candidates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((self.target, init.candidate.clone()));
            self.shared.send(&ClientMessage::Candidate {
                target: self.target,
                candidate: IceCandidate {
                    candidate: init.candidate,
                    sdp_mid: init.sdp_mid,
                    sdp_mline_index: init.sdp_mline_index,
                    username_fragment: init.username_fragment,
                },
            });
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let ev = match self.target {
            PcTarget::Publisher => Event::PublisherState(state),
            PcTarget::Subscriber => Event::SubscriberState(state),
        };
        let _ = self.shared.events.send(ev);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let shared = self.shared.clone();
        let track_id = TrackId::from_wire(track.track_id().await.to_string());
        let key = track_id.clone();
        let reader = tokio::spawn(async move {
            let kind = match track.kind().await {
                RtpCodecKind::Audio => MediaKind::Audio,
                _ => MediaKind::Video,
            };
            let participant = {
                let map = shared.sub_tracks.lock().await;
                map.values()
                    .find(|t| t.track_id == track_id)
                    .map(|t| t.participant_id.clone())
            }
            .unwrap_or_else(|| ParticipantId::from_wire(String::new()));
            shared
                .remote
                .lock()
                .await
                .insert(track_id.clone(), track.clone());
            let _ = shared.events.send(Event::TrackStarted {
                track: track_id.clone(),
                participant: participant.clone(),
                kind,
            });
            while let Some(ev) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = ev {
                    shared.received.packets.fetch_add(1, Ordering::Relaxed);
                    shared
                        .received
                        .bytes
                        .fetch_add(packet.payload.len() as u64, Ordering::Relaxed);
                    match &shared.sink {
                        RtpSink::Events => {
                            let _ = shared.events.send(Event::Rtp {
                                track: track_id.clone(),
                                participant: participant.clone(),
                                kind,
                                packet,
                            });
                        }
                        RtpSink::Stats { stats, subscriber } => {
                            // RED: what the synthetic payload is, is its primary block.
                            let payload = if packet.header.payload_type == RED_PT {
                                confab_sfu::rtp::red::primary(&packet.payload).unwrap_or_default()
                            } else {
                                packet.payload.clone()
                            };
                            let codec = match kind {
                                MediaKind::Audio => SynthCodec::Opus,
                                MediaKind::Video => SynthCodec::Vp8,
                            };
                            if kind == MediaKind::Video
                                && !shared.first_video.swap(true, Ordering::Relaxed)
                            {
                                stats.first_frame(shared.started.elapsed());
                            }
                            stats.packet(
                                *subscriber,
                                &track_id,
                                codec,
                                &payload,
                                media::now_micros(),
                            );
                        }
                    }
                }
            }
        });
        let mut readers = self
            .shared
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(old) = readers.insert(key, reader) {
            old.abort();
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        *self.shared.chat.lock().await = Some(dc.clone());
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if matches!(
                dc.ready_state().await,
                Ok(webrtc::data_channel::RTCDataChannelState::Open)
            ) {
                let _ = shared.events.send(Event::ChatOpen);
            }
            while let Some(ev) = dc.poll().await {
                match ev {
                    DataChannelEvent::OnOpen => {
                        let _ = shared.events.send(Event::ChatOpen);
                    }
                    DataChannelEvent::OnMessage(m) => {
                        if let Ok(c) = serde_json::from_slice::<ChatOut>(&m.data) {
                            let _ = shared.events.send(Event::Chat(c));
                        }
                    }
                    DataChannelEvent::OnClose => break,
                    _ => {}
                }
            }
        });
    }
}
