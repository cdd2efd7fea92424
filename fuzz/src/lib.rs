//! Fuzz entry points: the bytes a client controls, run through the functions the server
//! runs them through. Shared, unchanged, by the cargo-fuzz targets (`fuzz/fuzz_targets/`)
//! and by the corpus test (`tests/fuzz_corpus.rs` includes this file as a module), so that
//! `cargo test` on stable replays every corpus file through exactly what is fuzzed.
//!
//! - [`signal`]: a WebSocket text frame (`ClientMessage::decode`, `session::classify`) and a
//!   chat data-channel frame (`chat::parse_chat`).
//! - [`sdp`]: a client's SDP as the publisher's offer (`Peer::answer_offer`, then its
//!   `a=candidate` lines trickled through `Peer::add_remote_candidate`) and as the answer to
//!   the server's subscriber offer (`Peer::apply_answer`).
//! - [`rtp`]: a decrypted SRTP packet: `rtc::rtp::Packet::unmarshal` (what rtc does after
//!   decryption), then the media plane's inspection: sequence widening, keyframe detection
//!   for every codec, the VP8 descriptor and dimensions, the audio level, the forwarder's
//!   first decision. The payload parsers also get the raw bytes, so that the fuzzer reaches
//!   them without first building a valid header.
//! - [`rtcp`]: a decrypted SRTCP compound packet: `rtc::rtcp::packet::unmarshal`, then the
//!   worker's handling (keyframe requests, receiver reports into the RTT and the bandwidth
//!   estimate, sender reports).
//! - [`stun`]: any UDP datagram, before authentication: STUN recognition, the ufrag it is
//!   routed by, and the path tracker (`Paths`).
//!
//! No entry point may panic on any input. The asserts are invariants of the code under test:
//! one failing is a bug found, not a bad input.

use confab_proto::{ClientMessage, IceCandidate, MediaKind, TrackId};
use confab_sfu::forwarder::{Decision, DropReason, Forward, Forwarder, PacketInfo, Vp8Fields};
use confab_sfu::keys::{ParticipantKey, RoomKey};
use confab_sfu::peer::{Paths, PeerFactory, Role, TrackCodec};
use confab_sfu::rtp::codec::{Vp8Descriptor, vp8_dimensions};
use confab_sfu::rtp::{Codec, SeqResult, SeqTracker};
use confab_signal::session::{Step, classify};
use rtc::shared::marshal::Unmarshal;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// A fuzz entry point: bytes in, no panic.
pub type Target = fn(&[u8]);

/// Every target by name, as the corpus directories are named.
pub const TARGETS: &[(&str, Target)] = &[
    ("signal", signal),
    ("sdp", sdp),
    ("rtp", rtp),
    ("rtcp", rtcp),
    ("stun", stun),
];

/// The server's default `signal.max_message_bytes`, and a small limit that most inputs exceed.
const MESSAGE_LIMITS: [usize; 2] = [65_536, 64];
/// The server's default `room.chat_max_bytes`.
const CHAT_MAX_BYTES: usize = 4096;

/// One signaling text frame (and the same bytes as a chat frame).
pub fn signal(data: &[u8]) {
    // A WebSocket text frame is UTF-8 by the time the session sees it; invalid bytes are
    // replaced rather than skipped so that every input exercises the decoder.
    let text = String::from_utf8_lossy(data);
    if let Ok(m) = ClientMessage::decode(&text) {
        // Whatever the server accepts, it reads back the same once re-encoded.
        let again = serde_json::to_string(&m).expect("a decoded message serialises");
        assert_eq!(
            ClientMessage::decode(&again).as_ref(),
            Ok(&m),
            "re-encoded as {again}"
        );
    }
    for max in MESSAGE_LIMITS {
        // Before `join` nothing but a join is acted on; after it, never a second join.
        match classify(false, &text, max).1 {
            Step::Join { .. } | Step::Refuse(_) | Step::Fatal(_) => {}
            other => panic!("acted on before join: {other:?}"),
        }
        let (_, joined) = classify(true, &text, max);
        assert!(
            !matches!(joined, Step::Join { .. }),
            "a second join: {joined:?}"
        );
        if text.len() > max {
            assert!(
                matches!(joined, Step::Refuse(_)),
                "over the limit: {joined:?}"
            );
        }
    }
    if let (_, Ok(chat)) = confab_sfu::chat::parse_chat(data, CHAT_MAX_BYTES) {
        assert!(chat.len() <= CHAT_MAX_BYTES && !chat.trim().is_empty());
    }
}

/// One worker's peer settings, built once: generating a certificate per input would
/// dominate the run.
fn factory() -> &'static PeerFactory {
    static FACTORY: OnceLock<PeerFactory> = OnceLock::new();
    FACTORY.get_or_init(|| {
        let provider = rtc::crypto::default_provider().expect("crypto provider");
        let certificate = rtc::peer_connection::certificate::RTCCertificate::generate(
            provider.crypto(),
            rtc::crypto::SignatureScheme::EcdsaP256Sha256,
            rtc::peer_connection::certificate::CertificateParams::new(vec!["confab".into()])
                .expect("certificate parameters"),
        )
        .expect("certificate");
        PeerFactory {
            announce: "127.0.0.1:50000".parse().expect("address"),
            certificate,
            ice_disconnected_timeout: Duration::from_secs(5),
            ice_failed_timeout: Duration::from_secs(25),
            max_nacks_per_packet: 3,
            tcp_port: None,
        }
    })
}

/// A down-track codec as `Peer::describe_receiver` reports a browser's track.
fn track_codec(codec: Codec) -> TrackCodec {
    use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpCodec};
    let (mime, clock_rate, channels, fmtp, payload_type) = match codec {
        Codec::Opus => ("audio/opus", 48_000, 2, "minptime=10;useinbandfec=1", 111),
        _ => ("video/VP8", 90_000, 0, "", 96),
    };
    let rtcp_feedback = if codec.is_video() {
        [
            ("ccm", "fir"),
            ("nack", ""),
            ("nack", "pli"),
            ("transport-cc", ""),
        ]
        .iter()
        .map(|(typ, parameter)| RTCPFeedback {
            typ: (*typ).into(),
            parameter: (*parameter).into(),
        })
        .collect()
    } else {
        Vec::new()
    };
    TrackCodec {
        codec,
        rtp: RTCRtpCodec {
            mime_type: mime.into(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.into(),
            rtcp_feedback,
        },
        payload_type,
    }
}

/// A client's SDP: as the publisher connection's offer, and as the answer to the subscriber
/// connection's offer (a microphone and a camera of another participant, and the chat
/// channel: mids 0, 1, 2).
pub fn sdp(data: &[u8]) {
    let f = factory();
    // `ClientMessage` carries the SDP as a JSON string: UTF-8.
    let text = String::from_utf8_lossy(data).into_owned();

    let mut publisher = f
        .build(Role::Publisher, ParticipantKey(1), RoomKey(0))
        .expect("publisher peer");
    if let Ok((answer, _)) = publisher.answer_offer(text.clone(), f.announce) {
        assert!(answer.starts_with("v=0"), "answer: {answer}");
        // Browsers trickle the same candidate lines separately.
        for line in text.lines() {
            if let Some(candidate) = line.strip_prefix("a=")
                && candidate.starts_with("candidate:")
            {
                let _ = publisher.add_remote_candidate(IceCandidate {
                    candidate: candidate.to_owned(),
                    sdp_mid: Some("0".into()),
                    sdp_mline_index: Some(0),
                    username_fragment: None,
                });
            }
        }
        let _ = publisher.mids();
    }
    publisher.close();

    let mut subscriber = f
        .build(Role::Subscriber, ParticipantKey(2), RoomKey(0))
        .expect("subscriber peer");
    let owner = "PA_fuzz";
    for (slot, (id, kind, codec)) in [
        ("TR_01", MediaKind::Audio, Codec::Opus),
        ("TR_02", MediaKind::Video, Codec::Vp8),
    ]
    .into_iter()
    .enumerate()
    {
        subscriber
            .add_down_track(
                slot,
                &TrackId::from_wire(id),
                owner,
                kind,
                &track_codec(codec),
            )
            .expect("down-track");
    }
    subscriber
        .create_offer(f.announce, false)
        .expect("subscriber offer");
    if subscriber.apply_answer(text).is_ok() {
        let _ = subscriber.slot_mids();
    }
    subscriber.close();
}

/// What `sdp` does with a corpus file, for the corpus test to check that the seeds reach
/// past the parser: whether the publisher accepted it as an offer, and whether the
/// subscriber accepted it as an answer.
pub fn sdp_outcome(data: &[u8]) -> (bool, bool) {
    let f = factory();
    let text = String::from_utf8_lossy(data).into_owned();
    let mut publisher = f
        .build(Role::Publisher, ParticipantKey(1), RoomKey(0))
        .expect("publisher peer");
    let offer_ok = publisher.answer_offer(text.clone(), f.announce).is_ok();
    let mut subscriber = f
        .build(Role::Subscriber, ParticipantKey(2), RoomKey(0))
        .expect("subscriber peer");
    for (slot, (id, kind, codec)) in [
        ("TR_01", MediaKind::Audio, Codec::Opus),
        ("TR_02", MediaKind::Video, Codec::Vp8),
    ]
    .into_iter()
    .enumerate()
    {
        subscriber
            .add_down_track(
                slot,
                &TrackId::from_wire(id),
                "PA_fuzz",
                kind,
                &track_codec(codec),
            )
            .expect("down-track");
    }
    subscriber
        .create_offer(f.announce, false)
        .expect("subscriber offer");
    let answer_ok = subscriber.apply_answer(text).is_ok();
    (offer_ok, answer_ok)
}

const CODECS: [Codec; 5] = [
    Codec::Vp8,
    Codec::Vp9,
    Codec::H264,
    Codec::Opus,
    Codec::Other,
];

/// One RTP packet as SRTP decryption leaves it.
pub fn rtp(data: &[u8]) {
    inspect_payload(data);
    let mut buf = bytes::BytesMut::from(data);
    let Ok(pkt) = rtc::rtp::Packet::unmarshal(&mut buf) else {
        return;
    };
    inspect_payload(&pkt.payload);
    // The audio level, whichever id the publisher negotiated for it.
    for id in 1..=14 {
        if let Some(ext) = pkt.header.get_extension(id)
            && let Some(level) = confab_sfu::speaker::audio_level(&ext)
        {
            assert!(level <= 127);
        }
    }
    for codec in CODECS {
        first_packet(codec, &pkt);
    }
    through_a_room(&pkt);
}

/// The packet through the real room (`Room::forward`, driven by `room::harness`): as a
/// publisher's audio and video, twice (the second a duplicate), to one subscriber.
fn through_a_room(pkt: &rtc::rtp::Packet) {
    use confab_proto::TrackSource;
    use confab_sfu::room::harness::Harness;
    let mut h = Harness::new(confab_sfu::SfuConfig::default());
    let a = h.join(1);
    let b = h.join(2);
    let tracks = h.publish(
        a,
        &[
            (MediaKind::Audio, TrackSource::Microphone),
            (MediaKind::Video, TrackSource::Camera),
        ],
    );
    for t in tracks {
        let Some(ssrc) = h
            .room
            .track(t)
            .and_then(|t| t.layers.first()?.as_ref().map(|l| l.ssrc))
        else {
            continue;
        };
        let mut p = pkt.clone();
        p.header.ssrc = ssrc;
        for _ in 0..2 {
            for (peer, _, _) in h.rtp(t, p.clone()) {
                assert_eq!(h.owner(peer), Some(b), "only the subscriber gets a copy");
            }
        }
    }
    h.check();
}

/// The payload parsers, as `worker::media` calls them on every packet.
fn inspect_payload(payload: &[u8]) {
    for codec in CODECS {
        let key = codec.is_keyframe(payload);
        assert!(!key || codec.is_video(), "{codec:?} keyframe");
    }
    if let Some(d) = Vp8Descriptor::parse(payload) {
        assert!(d.len <= payload.len(), "{d:?}");
        assert_eq!(Codec::Vp8.is_keyframe(payload), d.is_keyframe);
        assert!(!d.is_keyframe || (d.start && d.partition_id == 0), "{d:?}");
        if let Some((pid, long)) = d.picture_id {
            assert!(pid < if long { 1 << 15 } else { 1 << 7 }, "{d:?}");
            let off = d.picture_id_offset.expect("picture id without offset");
            assert!(off + usize::from(long) < d.len, "{d:?}");
        }
        if let Some(tl0) = d.tl0picidx {
            let off = d.tl0picidx_offset.expect("TL0PICIDX without offset");
            assert!(off < d.len && payload[off] == tl0, "{d:?}");
        }
        assert!(d.tid.is_none_or(|t| t < 4) && d.keyidx.is_none_or(|k| k < 32));
        // Exactly the server's slicing: the frame after the descriptor.
        if let Some((w, h)) = vp8_dimensions(&payload[d.len..]) {
            assert!(w < 1 << 14 && h < 1 << 14);
        }
    }
    if let Some((w, h)) = vp8_dimensions(payload) {
        assert!(w < 1 << 14 && h < 1 << 14);
    }
}

/// The ingress path of a track's first packet: widened, then a fresh down-track's
/// decision. The first start keeps the input numbering.
fn first_packet(codec: Codec, pkt: &rtc::rtp::Packet) {
    let now = Instant::now();
    let mut seq = SeqTracker::new();
    let SeqResult::New { ext, newest: true } = seq.push(pkt.header.sequence_number) else {
        panic!("the first packet is not new");
    };
    assert_eq!(ext as u16, pkt.header.sequence_number);
    assert_eq!(
        seq.push(pkt.header.sequence_number),
        SeqResult::Duplicate { ext }
    );

    let descriptor = (codec == Codec::Vp8)
        .then(|| Vp8Descriptor::parse(&pkt.payload))
        .flatten();
    let keyframe = codec.is_keyframe(&pkt.payload);
    let info = PacketInfo {
        layer: 0,
        ext_seq: ext,
        ts: pkt.header.timestamp,
        keyframe,
        padding_only: pkt.payload.is_empty(),
        vp8: descriptor.map(|d| Vp8Fields {
            picture_id: d.picture_id,
            tl0picidx: d.tl0picidx,
        }),
    };
    let mut fw = Forwarder::new(codec);
    fw.set_active(true);
    let want = if codec.is_video() && !keyframe {
        Decision::Drop(DropReason::WaitingKeyframe)
    } else if info.padding_only {
        Decision::Drop(DropReason::Padding)
    } else {
        Decision::Forward(Forward {
            seq: pkt.header.sequence_number,
            ts: pkt.header.timestamp,
            vp8: None,
        })
    };
    assert_eq!(fw.on_packet(&info, now), want, "{codec:?} {info:?}");
}

/// One compound RTCP packet as SRTCP decryption leaves it.
pub fn rtcp(data: &[u8]) {
    use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::rtcp::sender_report::SenderReport;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;

    let mut buf = bytes::BytesMut::from(data);
    let Ok(pkts) = rtc::rtcp::packet::unmarshal(&mut buf) else {
        return;
    };
    let now = Instant::now();
    let now_ntp = confab_sfu::bwe::ntp_time(SystemTime::now());
    let mut bwe = confab_sfu::bwe::Bwe::new(confab_sfu::bwe::BweConfig::default());
    let cfg = confab_sfu::bwe::BweConfig::default();
    for p in &pkts {
        let any = p.as_any();
        if any.is::<PictureLossIndication>()
            || any.is::<FullIntraRequest>()
            || any.is::<TransportLayerNack>()
        {
            continue;
        }
        if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
            for r in &rr.reports {
                if let Some(rtt) =
                    confab_sfu::bwe::rtt_from_report(now_ntp, r.last_sender_report, r.delay)
                {
                    assert!(rtt < Duration::from_secs(60), "{rtt:?}");
                }
                let estimate = bwe.on_report(r.fraction_lost, 2_000_000, now);
                assert!(
                    (cfg.min_bps..=cfg.max_bps).contains(&estimate),
                    "{estimate}"
                );
            }
        } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
            let _ = (sr.ssrc, sr.ntp_time, sr.rtp_time);
        }
    }
}

/// Any datagram on the media socket, before it is authenticated.
pub fn stun(data: &[u8]) {
    use confab_sfu::peer::{is_binding_success, is_stun, stun_target_ufrag};
    let stun = is_stun(data);
    assert!(!is_binding_success(data) || stun);
    if stun && let Some(ufrag) = stun_target_ufrag(data) {
        assert!(!ufrag.is_empty() && !ufrag.contains(':'), "{ufrag:?}");
    }
    let first: SocketAddr = "192.0.2.1:40000".parse().expect("address");
    let second: SocketAddr = "192.0.2.2:40001".parse().expect("address");
    let mut paths = Paths::default();
    assert_eq!(paths.inbound(data, first, false), first);
    paths.accepted(first);
    assert_eq!(paths.inbound(data, first, true), first);
    // Unauthenticated datagrams from elsewhere are shown as they are (the agent refuses
    // them); authenticated ones as coming from the first path.
    assert_eq!(paths.inbound(data, second, false), second);
    assert_eq!(paths.inbound(data, second, true), first);
    let to = paths.outbound(data, first);
    assert!(to == first || to == second, "{to}");
}
