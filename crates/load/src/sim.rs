//! A lightweight simulated participant for load runs: the same protocol as [`crate::client`]
//! (real WebSocket, real ICE/DTLS/SRTP), but its peer connections are webrtc-rs' sans-IO
//! `rtc` core driven from one task per participant, with no per-track tasks or channels.
//! It costs several times less CPU per received packet than the async client, so one
//! generator core can measure a server at tens of thousands of packets per second.
//!
//! It publishes synthetic media (see [`crate::media`]) and measures what it receives into
//! [`RecvStats`]; it does not chat.

use crate::client::{MAX_VIDEO_PAYLOAD, MediaPlan, Publish};
use crate::media::{self, SynthCodec};
use crate::stats::RecvStats;
use anyhow::{Context, anyhow, bail};
use bytes::BytesMut;
use confab_proto::signal::PublishTrack;
use confab_proto::{
    ClientMessage, MediaKind, PROTOCOL_VERSION, ServerMessage, TrackId, TrackSource,
};
use futures_util::{SinkExt, StreamExt};
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::configure_rtcp_reports;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const OPUS_PT: u8 = 111;
const VP8_PT: u8 = 96;

/// One simulated participant.
#[derive(Clone)]
pub struct SimOptions {
    pub url: String,
    pub room: String,
    pub name: String,
    pub publish: Publish,
    pub plan: MediaPlan,
    pub stats: Arc<RecvStats>,
    /// This participant's number in `stats`.
    pub index: usize,
}

/// Shared by a run's participants: stop flag and counters.
#[derive(Default)]
pub struct SimControl {
    pub stop: AtomicBool,
    pub sent: AtomicU64,
}

fn codec(kind: MediaKind) -> RTCRtpCodec {
    match kind {
        MediaKind::Audio => RTCRtpCodec {
            mime_type: "audio/opus".into(),
            clock_rate: 48000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
            rtcp_feedback: vec![],
        },
        MediaKind::Video => RTCRtpCodec {
            mime_type: "video/VP8".into(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
    }
}

fn build_pc(local: SocketAddr, publisher: bool) -> anyhow::Result<RTCPeerConnection> {
    let mut media = MediaEngine::default();
    media.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: codec(MediaKind::Audio),
            payload_type: OPUS_PT,
        },
        RtpCodecKind::Audio,
    )?;
    media.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: codec(MediaKind::Video),
            payload_type: VP8_PT,
        },
        RtpCodecKind::Video,
    )?;
    // Mid and rid let the server tell simulcast layers apart (it learns their SSRCs from
    // them); the audio level feeds its speaker detector.
    use rtc::sdp::extmap;
    for (uri, kind) in [
        (extmap::SDES_MID_URI, RtpCodecKind::Video),
        (extmap::SDES_RTP_STREAM_ID_URI, RtpCodecKind::Video),
        (extmap::SDES_MID_URI, RtpCodecKind::Audio),
        (extmap::AUDIO_LEVEL_URI, RtpCodecKind::Audio),
    ] {
        media.register_header_extension(
            rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                uri: uri.to_owned(),
            },
            kind,
            None,
        )?;
    }
    let mut registry = configure_rtcp_reports(Registry::new());
    if publisher {
        // Keyframe requests must reach us to be answered.
        registry = registry.with(
            rtc::interceptor::Slot::from(14_000),
            crate::client::KeyframeTap::default(),
        );
    }
    // Behave like a browser: answer as the DTLS client (setup:active) and send the first
    // ICE checks at once rather than after the default 200 ms interval.
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .with_answering_dtls_role(rtc::peer_connection::transport::RTCDtlsRole::Client)
        .with_ice_connection_attempts(Some(Duration::from_millis(20)), Some(50))
        .build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(Instant::now())?;
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: local.ip().to_string(),
            port: local.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
    pc.add_local_candidate(RTCIceCandidateInit::default())?;
    Ok(pc)
}

/// A peer connection with its socket.
struct Leg {
    pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    connected: bool,
}

impl Leg {
    async fn new(publisher: bool) -> anyhow::Result<Leg> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let local = socket.local_addr()?;
        Ok(Leg {
            pc: build_pc(local, publisher)?,
            socket,
            local,
            connected: false,
        })
    }

    fn read(&mut self, buf: &[u8], from: SocketAddr) {
        let _ = self.pc.handle_read(TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(buf),
        });
    }

    fn flush(&mut self) {
        while let Some(out) = self.pc.poll_write() {
            let _ = self
                .socket
                .try_send_to(&out.message, out.transport.peer_addr);
        }
    }
}

/// One outgoing encoding: the audio track, the video track, or one simulcast layer of it.
struct Sender {
    id: RTCRtpSenderId,
    ssrc: u32,
    seq: u16,
    index: u64,
    rid: Option<&'static str>,
    mid: Option<String>,
    /// Video: frame bytes and height of this layer, picture id and TL0PICIDX.
    bytes: usize,
    height: u16,
    picture_id: u16,
    tl0: u8,
}

/// Negotiated header-extension ids of a sender, looked up once.
#[derive(Debug, Clone, Copy, Default)]
struct ExtIds {
    mid: Option<u8>,
    rid: Option<u8>,
    level: Option<u8>,
}

fn ext_ids(pc: &mut RTCPeerConnection, id: RTCRtpSenderId) -> ExtIds {
    let mut ids = ExtIds::default();
    if let Some(mut s) = pc.rtp_sender(id) {
        for e in &s.get_parameters().rtp_parameters.header_extensions {
            match e.uri.as_str() {
                rtc::sdp::extmap::SDES_MID_URI => ids.mid = Some(e.id as u8),
                rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI => ids.rid = Some(e.id as u8),
                rtc::sdp::extmap::AUDIO_LEVEL_URI => ids.level = Some(e.id as u8),
                _ => {}
            }
        }
    }
    ids
}

/// Joins and runs until `control.stop`; returns the time the join took.
pub async fn run(
    opts: SimOptions,
    control: Arc<SimControl>,
    joined: tokio::sync::oneshot::Sender<anyhow::Result<Duration>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let send =
        |m: &ClientMessage| WsMessage::Text(serde_json::to_string(m).unwrap_or_default().into());
    // A `redirect` (the room lives on another node) is followed once.
    let mut url = opts.url.clone();
    let mut redirects = 0;
    let (mut tx, mut rx) = 'join: loop {
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let (mut tx, mut rx) = ws.split();
        tx.send(send(&ClientMessage::Join {
            protocol: PROTOCOL_VERSION,
            room: confab_proto::RoomId::parse(&opts.room)?,
            name: confab_proto::DisplayName::parse(&opts.name)?,
            token: None,
            resume: None,
            check: false,
        }))
        .await?;
        loop {
            let t = match rx.next().await {
                Some(Ok(WsMessage::Text(t))) => t,
                Some(Ok(_)) => continue,
                other => {
                    let e = anyhow!("closed before joined: {other:?}");
                    let _ = joined.send(Err(anyhow!("{e}")));
                    return Err(e);
                }
            };
            match serde_json::from_str::<ServerMessage>(&t)? {
                ServerMessage::Joined { .. } => break 'join (tx, rx),
                ServerMessage::Redirect { url: to, .. } if redirects == 0 => {
                    redirects += 1;
                    url = to;
                    continue 'join;
                }
                ServerMessage::Redirect { url: to, .. } => {
                    let e = anyhow!("redirected again (to {to})");
                    let _ = joined.send(Err(anyhow!("{e}")));
                    return Err(e);
                }
                ServerMessage::Error { code, message, .. } => {
                    let e = anyhow!("join refused: {code:?}: {message}");
                    let _ = joined.send(Err(anyhow!("{e}")));
                    return Err(e);
                }
                _ => {}
            }
        }
    };
    let _ = joined.send(Ok(started.elapsed()));

    let mut sub = Leg::new(false).await?;
    // remote track id -> kind, from the server's offers
    let mut kinds: HashMap<String, MediaKind> = HashMap::new();
    let mut first_video = false;

    // Publisher leg and its senders.
    let mut publ: Option<Leg> = None;
    let mut audio: Option<Sender> = None;
    let mut video: Vec<Sender> = Vec::new();
    let plan = opts.plan;
    if opts.publish.audio || opts.publish.video {
        let mut leg = Leg::new(true).await?;
        for (kind, wanted) in [
            (MediaKind::Audio, opts.publish.audio),
            (MediaKind::Video, opts.publish.video),
        ] {
            if !wanted {
                continue;
            }
            let rk = match kind {
                MediaKind::Audio => RtpCodecKind::Audio,
                MediaKind::Video => RtpCodecKind::Video,
            };
            // (rid, share of the top layer's frame size, height)
            let layers: Vec<(Option<&'static str>, usize, u16)> =
                if kind == MediaKind::Video && opts.publish.simulcast {
                    crate::client::SIMULCAST_LAYERS
                        .iter()
                        .map(|(r, share, h)| (Some(*r), *share, *h))
                        .collect()
                } else {
                    vec![(None, 1, 720)]
                };
            let ssrcs: Vec<u32> = layers.iter().map(|_| rand::random()).collect();
            let id = leg.pc.add_track(MediaStreamTrack::new(
                format!("{}-stream", opts.name),
                format!("{}-{kind:?}", opts.name),
                format!("{kind:?}"),
                rk,
                layers
                    .iter()
                    .zip(&ssrcs)
                    .map(|((rid, _, _), ssrc)| RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(*ssrc),
                            rid: rid.unwrap_or_default().to_string(),
                            ..Default::default()
                        },
                        codec: codec(kind),
                        ..Default::default()
                    })
                    .collect(),
            ))?;
            for ((rid, share, height), ssrc) in layers.into_iter().zip(ssrcs) {
                let s = Sender {
                    id,
                    ssrc,
                    seq: rand::random(),
                    index: 0,
                    rid,
                    mid: None,
                    bytes: (plan.video_bytes / share).max(60),
                    height,
                    picture_id: rand::random::<u16>() & 0x7fff,
                    tl0: rand::random(),
                };
                match kind {
                    MediaKind::Audio => audio = Some(s),
                    MediaKind::Video => video.push(s),
                }
            }
        }
        let offer = leg.pc.create_offer(None)?;
        leg.pc.set_local_description(Instant::now(), offer)?;
        let sdp = leg
            .pc
            .local_description()
            .ok_or_else(|| anyhow!("no local description"))?
            .sdp;
        let mut publish = Vec::new();
        let ids: Vec<_> = leg.pc.get_transceivers().collect();
        for id in ids {
            if let Some(t) = leg.pc.rtp_transceiver(id)
                && let Some(mid) = t.mid().clone()
                && let Some(sender) = t.sender()
            {
                let is_audio = audio.as_ref().is_some_and(|a| a.id == sender);
                for s in audio.iter_mut().chain(video.iter_mut()) {
                    if s.id == sender {
                        s.mid = Some(mid.clone());
                    }
                }
                let source = if is_audio {
                    TrackSource::Microphone
                } else {
                    TrackSource::Camera
                };
                publish.push(PublishTrack { mid, source });
            }
        }
        tx.send(send(&ClientMessage::Publish {
            sdp,
            tracks: publish,
        }))
        .await?;
        publ = Some(leg);
    }
    let mut ids: HashMap<RTCRtpSenderId, ExtIds> = HashMap::new();

    let mut audio_next = Instant::now();
    let video_gap = Duration::from_micros(1_000_000 / plan.fps.max(1) as u64);
    let mut video_next = Instant::now();
    let mut last_key: Option<Instant> = None;
    let mut key_requested = false;
    let mut frame = 0u64;
    let mut buf_sub = vec![0u8; 2048];
    let mut buf_pub = vec![0u8; 2048];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    while !control.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut deadline = now + Duration::from_millis(100);
        for leg in std::iter::once(&mut sub).chain(publ.iter_mut()) {
            if let Some(t) = leg.pc.poll_timeout() {
                deadline = deadline.min(t);
            }
        }
        let publishing = publ.as_ref().is_some_and(|l| l.connected);
        if publishing {
            if audio.is_some() {
                deadline = deadline.min(audio_next);
            }
            if !video.is_empty() {
                deadline = deadline.min(video_next);
            }
        }
        tokio::select! {
            frame_in = rx.next() => {
                let t = match frame_in {
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    other => {
                        tracing::debug!(?other, "signaling closed");
                        break;
                    }
                };
                let Ok(msg) = serde_json::from_str::<ServerMessage>(&t) else { continue };
                match msg {
                    ServerMessage::Offer { sdp, tracks } => {
                        tracing::debug!(after_ms = started.elapsed().as_millis() as u64, "offer");
                        for t in tracks {
                            kinds.insert(t.track_id.as_str().to_string(), t.kind);
                        }
                        sub.pc.set_remote_description(Instant::now(), RTCSessionDescription::offer(sdp)?)?;
                        let answer = sub.pc.create_answer(None)?;
                        sub.pc.set_local_description(Instant::now(), answer)?;
                        let sdp = sub.pc.local_description().ok_or_else(|| anyhow!("no answer"))?.sdp;
                        tx.send(send(&ClientMessage::Answer { sdp })).await?;
                    }
                    ServerMessage::Answer { sdp, .. } => {
                        if let Some(p) = publ.as_mut() {
                            p.pc.set_remote_description(Instant::now(), RTCSessionDescription::answer(sdp)?)?;
                        }
                    }
                    ServerMessage::Error { fatal: true, code, message, .. } => bail!("{code:?}: {message}"),
                    _ => {}
                }
            }
            r = sub.socket.recv_from(&mut buf_sub) => {
                if let Ok((n, from)) = r {
                    sub.read(&buf_sub[..n], from);
                    // Drain whatever else already arrived before looking at the rest.
                    while let Ok((n, from)) = sub.socket.try_recv_from(&mut buf_sub) {
                        sub.read(&buf_sub[..n], from);
                    }
                }
            }
            r = async { match publ.as_ref() { Some(p) => p.socket.recv_from(&mut buf_pub).await, None => std::future::pending().await } } => {
                if let (Ok((n, from)), Some(p)) = (r, publ.as_mut()) {
                    p.read(&buf_pub[..n], from);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        let now = Instant::now();
        for leg in std::iter::once(&mut sub).chain(publ.iter_mut()) {
            let _ = leg.pc.handle_timeout(now);
            while let Some(ev) = leg.pc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = ev {
                    tracing::debug!(state = %s, after_ms = started.elapsed().as_millis() as u64, "sim connection state");
                    leg.connected = s == RTCPeerConnectionState::Connected;
                }
            }
        }
        // Received media.
        while let Some(TaggedRTCMessage { message, .. }) = sub.pc.poll_read() {
            if let RTCMessage::RtpPacket(track, pkt) = message {
                let kind = kinds.get(&track).copied().unwrap_or(MediaKind::Video);
                if kind == MediaKind::Video && !first_video {
                    first_video = true;
                    tracing::debug!(
                        after_ms = started.elapsed().as_millis() as u64,
                        "first video"
                    );
                    opts.stats.first_frame(started.elapsed());
                }
                let codec = match kind {
                    MediaKind::Audio => SynthCodec::Opus,
                    MediaKind::Video => SynthCodec::Vp8,
                };
                opts.stats.packet(
                    opts.index,
                    &TrackId::from_wire(track),
                    codec,
                    &pkt.payload,
                    media::now_micros(),
                );
            }
        }
        // Keyframe requests arrive as RTCP on the publisher leg; any PLI/FIR means "send one"
        // (with the next frame).
        if let Some(p) = publ.as_mut() {
            while let Some(TaggedRTCMessage { message, .. }) = p.pc.poll_read() {
                if let RTCMessage::RtcpPacket(_, _) = message {
                    key_requested = true;
                }
            }
        }
        // Publish what is due.
        if let (Some(p), true) = (publ.as_mut(), publishing) {
            if let Some(a) = audio.as_mut()
                && now >= audio_next
            {
                audio_next += Duration::from_millis(20);
                if audio_next < now {
                    audio_next = now + Duration::from_millis(20);
                }
                let e = *ids.entry(a.id).or_insert_with(|| ext_ids(&mut p.pc, a.id));
                let mut pkt = packet(
                    OPUS_PT,
                    a,
                    a.index as u32 * 960,
                    true,
                    None,
                    plan.audio_bytes,
                );
                if let Some(id) = e.level {
                    let v =
                        (plan.audio_level.min(127)) | if plan.audio_level < 127 { 0x80 } else { 0 };
                    let _ = pkt
                        .header
                        .set_extension(id, bytes::Bytes::copy_from_slice(&[v]));
                }
                if let (Some(id), Some(mid)) = (e.mid, &a.mid) {
                    let _ = pkt
                        .header
                        .set_extension(id, bytes::Bytes::copy_from_slice(mid.as_bytes()));
                }
                if let Some(mut s) = p.pc.rtp_sender(a.id)
                    && s.write_rtp(now, pkt).is_ok()
                {
                    control.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            if !video.is_empty() && now >= video_next {
                video_next += video_gap;
                if video_next < now {
                    video_next = now + video_gap;
                }
                let key = std::mem::take(&mut key_requested)
                    || last_key.is_none_or(|k| now - k >= plan.keyframe_every);
                if key {
                    last_key = Some(now);
                }
                let ts = (frame * 90_000 / plan.fps.max(1) as u64) as u32;
                for (layer, v) in video.iter_mut().enumerate() {
                    let e = *ids.entry(v.id).or_insert_with(|| ext_ids(&mut p.pc, v.id));
                    let parts = v.bytes.div_ceil(MAX_VIDEO_PAYLOAD).max(1);
                    let size = v.bytes.div_ceil(parts);
                    if key {
                        v.tl0 = v.tl0.wrapping_add(1);
                    }
                    for part in 0..parts {
                        let meta = media::Vp8Meta {
                            start: part == 0,
                            keyframe: key,
                            picture_id: v.picture_id,
                            tl0picidx: v.tl0,
                            width: v.height * 16 / 9,
                            height: v.height,
                        };
                        let mut pkt = packet(
                            VP8_PT,
                            v,
                            ts,
                            part + 1 == parts,
                            Some((meta, layer as u64)),
                            size,
                        );
                        if let (Some(id), Some(mid)) = (e.mid, &v.mid) {
                            let _ = pkt
                                .header
                                .set_extension(id, bytes::Bytes::copy_from_slice(mid.as_bytes()));
                        }
                        if let (Some(id), Some(rid)) = (e.rid, v.rid) {
                            let _ = pkt
                                .header
                                .set_extension(id, bytes::Bytes::copy_from_slice(rid.as_bytes()));
                        }
                        if let Some(mut s) = p.pc.rtp_sender(v.id)
                            && s.write_rtp(now, pkt).is_ok()
                        {
                            control.sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    v.picture_id = (v.picture_id + 1) & 0x7fff;
                }
                frame += 1;
            }
        }
        sub.flush();
        if let Some(p) = publ.as_mut() {
            p.flush();
        }
    }
    let _ = tx.send(send(&ClientMessage::Leave)).await;
    let _ = sub.pc.close();
    sub.flush();
    if let Some(mut p) = publ {
        let _ = p.pc.close();
        p.flush();
    }
    let _ = tx.close().await;
    // Read until the server closes too: a socket dropped with unread messages is reset,
    // and the server would take the lost `leave` for a broken connection to resume.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = rx.next().await {}
    })
    .await;
    Ok(())
}

fn packet(
    pt: u8,
    s: &mut Sender,
    ts: u32,
    marker: bool,
    vp8: Option<(media::Vp8Meta, u64)>,
    size: usize,
) -> rtc::rtp::Packet {
    // The layer is in the index's top byte, so that a receiver can tell which it got.
    let (meta, index) = match vp8 {
        Some((m, layer)) => (Some(m), (layer << 56) | s.index),
        None => (None, s.index),
    };
    let p = rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            marker,
            payload_type: pt,
            sequence_number: s.seq,
            timestamp: ts,
            ssrc: s.ssrc,
            ..Default::default()
        },
        payload: media::payload(meta, index, size, media::now_micros()),
    };
    s.seq = s.seq.wrapping_add(1);
    s.index += 1;
    p
}
