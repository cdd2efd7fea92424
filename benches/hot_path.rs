//! Micro-benchmarks of the forwarding hot path (pure code, no sockets):
//! RTP parse and rewrite, the forwarding decision, fan-out to 1/10/100 down-tracks,
//! signaling message decode.
//!
//!     cargo bench --bench hot_path
//!
//! `egress/*` is one forwarded copy as the worker makes it: the VP8 picture-id rewrite a
//! simulcast switch needs, then the down-track's SRTP (AES-128-GCM, what Chromium and the
//! webrtc-rs clients negotiate) into the datagram, with its retransmission history and
//! counts. The kernel's share is measured end to end by `benches/scenarios.sh`.

use bytes::Bytes;
use confab_proto::{ClientMessage, MediaKind, TrackId, TrackSource};
use confab_sfu::forwarder::{Forwarder, PacketInfo};
use confab_sfu::keys::{ParticipantKey, PeerKey};
use confab_sfu::peer::TrackCodec;
use confab_sfu::room::{Emit, PublishedTrack};
use confab_sfu::rtp::{Codec, SeqTracker};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rtc::shared::marshal::{Marshal, Unmarshal};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn vp8_packet(seq: u16, key: bool) -> rtc::rtp::Packet {
    let mut payload = vec![0u8; 1100];
    payload[0] = 0x90; // X, S
    payload[1] = 0x80; // I
    payload[2] = 0x80 | 0x12; // 15-bit picture id
    payload[3] = 0x34;
    payload[4] = if key { 0x00 } else { 0x01 };
    rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            marker: true,
            payload_type: 96,
            sequence_number: seq,
            timestamp: seq as u32 * 3000,
            ssrc: 0x1234_5678,
            ..Default::default()
        },
        payload: Bytes::from(payload),
    }
}

fn rtp(c: &mut Criterion) {
    let wire = vp8_packet(1000, false).marshal().unwrap();
    let mut g = c.benchmark_group("rtp");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse", |b| {
        b.iter(|| {
            let mut buf = black_box(&wire[..]);
            rtc::rtp::Packet::unmarshal(&mut buf).unwrap()
        })
    });
    g.bench_function("widen_and_dedup", |b| {
        let mut t = SeqTracker::new();
        let mut seq = 0u16;
        b.iter(|| {
            seq = seq.wrapping_add(1);
            black_box(t.push(black_box(seq)))
        })
    });
    let pkt = vp8_packet(1000, false);
    g.bench_function("keyframe_detect_vp8", |b| {
        b.iter(|| Codec::Vp8.is_keyframe(black_box(&pkt.payload)))
    });
    g.bench_function("rewrite_clone", |b| {
        b.iter(|| {
            let mut p = black_box(&pkt).clone();
            p.header.sequence_number = 7;
            p.header.timestamp = 9;
            p.header.ssrc = 11;
            p.header.payload_type = 96;
            black_box(p)
        })
    });
    g.finish();
}

fn forwarding(c: &mut Criterion) {
    let now = Instant::now();
    let mut g = c.benchmark_group("forwarder");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decision", |b| {
        let mut f = Forwarder::new(Codec::Vp8);
        f.set_active(true);
        let mut seq = 1u64 << 16;
        f.on_packet(
            &PacketInfo {
                layer: 0,
                ext_seq: seq,
                ts: 0,
                keyframe: true,
                padding_only: false,
                vp8: None,
            },
            now,
        );
        b.iter(|| {
            seq += 1;
            black_box(f.on_packet(
                &PacketInfo {
                    layer: 0,
                    ext_seq: seq,
                    ts: seq as u32 * 3000,
                    keyframe: false,
                    padding_only: false,
                    vp8: None,
                },
                now,
            ))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("fan_out");
    for n in [1usize, 10, 100] {
        let mut t = PublishedTrack::new(
            TrackId::from_suffix("bench"),
            ParticipantKey(1),
            MediaKind::Video,
            TrackSource::Camera,
            TrackCodec {
                codec: Codec::Vp8,
                rtp: Default::default(),
                payload_type: 96,
            },
            PeerKey(1),
            "rtc".into(),
            None,
            Duration::from_millis(500),
        );
        for i in 0..n {
            t.add_down(ParticipantKey(100 + i as u64), PeerKey(100 + i as u64), 0);
            t.down_of_mut(ParticipantKey(100 + i as u64))
                .unwrap()
                .forwarder
                .set_active(true);
        }
        let mut seq = 1u64 << 16;
        let key = PacketInfo {
            layer: 0,
            ext_seq: seq,
            ts: 0,
            keyframe: true,
            padding_only: false,
            vp8: None,
        };
        t.fan_out(&key, now, |_| {});
        let pkt = vp8_packet(0, false);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                seq += 1;
                let info = PacketInfo {
                    ext_seq: seq,
                    ts: seq as u32 * 3000,
                    keyframe: false,
                    ..key
                };
                // The decision plus the per-copy rewrite the peer layer does.
                t.fan_out(&info, now, |e| {
                    if let Emit::Down(_, rw) = e {
                        let mut p = pkt.clone();
                        p.header.sequence_number = rw.seq;
                        p.header.timestamp = rw.ts;
                        black_box(p);
                    }
                })
            })
        });
    }
    g.finish();
}

fn signaling(c: &mut Criterion) {
    let candidate = r#"{"type":"candidate","target":"publisher","candidate":{"candidate":"candidate:1 1 udp 2122260223 127.0.0.1 50123 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"}}"#;
    let mute = r#"{"type":"mute","source":"camera","muted":true}"#;
    let mut g = c.benchmark_group("signaling_decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("candidate", |b| {
        b.iter(|| ClientMessage::decode(black_box(candidate)).unwrap())
    });
    g.bench_function("mute", |b| {
        b.iter(|| ClientMessage::decode(black_box(mute)).unwrap())
    });
    g.bench_function("unknown_type", |b| {
        b.iter(|| ClientMessage::decode(black_box(r#"{"type":"nope"}"#)).unwrap_err())
    });
    g.finish();
}

fn egress(c: &mut Criterion) {
    use confab_sfu::egress::{DownStream, LocalKeys, StreamParams};
    use confab_sfu::rtp::codec::{Vp8Descriptor, Vp8Patch};
    let keys = LocalKeys::new(
        rtc::srtp::protection_profile::ProtectionProfile::AeadAes128Gcm,
        vec![7; 16],
        vec![9; 12],
    );
    let mut stream = DownStream::new(
        &keys,
        StreamParams {
            ssrc: 0x0bad_cafe,
            payload_type: 96,
            clock_rate: 90_000,
            retransmit: true,
            red: None,
            rtx: None,
        },
    )
    .unwrap();
    let pkt = vp8_packet(0, false);
    let desc = Vp8Descriptor::parse(&pkt.payload).unwrap();
    let now = Instant::now();
    let mut scratch = Vec::new();
    let mut seq = 0u16;
    let mut g = c.benchmark_group("egress");
    g.throughput(Throughput::Elements(1));
    g.bench_function("protect", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let mut p = pkt.clone();
            p.header.sequence_number = seq;
            black_box(stream.write(p, None, None, now, &mut scratch))
        })
    });
    // The transport-wide number written as the packet's header extension, alone (no
    // record, no feedback): what the stamp itself costs.
    g.bench_function("stamp_and_protect", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let mut p = pkt.clone();
            p.header.sequence_number = seq;
            black_box(stream.write(p, None, Some((3, seq)), now, &mut scratch))
        })
    });
    // The same with a transport-wide sequence number: numbered, recorded for feedback,
    // written as a header extension (what every packet to a browser now costs), with the
    // subscriber's feedback acknowledging each 100 packets, as Chromium's every ~100 ms
    // does at 1,000 packets/s (its cost is in the figure, spread over the packets).
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
        PacketStatusChunk, RecvDelta, RunLengthChunk, StatusChunkTypeTcc, SymbolTypeTcc,
        TransportLayerCc,
    };
    let mut fb = TransportLayerCc {
        sender_ssrc: 1,
        media_ssrc: 1,
        base_sequence_number: 0,
        packet_status_count: 100,
        reference_time: 0,
        fb_pkt_count: 0,
        packet_chunks: vec![PacketStatusChunk::RunLengthChunk(RunLengthChunk {
            type_tcc: StatusChunkTypeTcc::RunLengthChunk,
            packet_status_symbol: SymbolTypeTcc::PacketReceivedSmallDelta,
            run_length: 100,
        })],
        recv_deltas: (0..100)
            .map(|_| RecvDelta {
                type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta,
                delta: 1000,
            })
            .collect(),
    };
    let mut cc = confab_sfu::twcc::TransportCc::new(3);
    let mut t = now;
    let mut n = 0u32;
    g.bench_function("twcc_stamp_and_protect", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            t += std::time::Duration::from_millis(1);
            let mut p = pkt.clone();
            p.header.sequence_number = seq;
            let twcc = cc.on_send(1, seq, 1100, t);
            n += 1;
            if n.is_multiple_of(100) {
                fb.base_sequence_number = twcc.wrapping_sub(99);
                fb.reference_time += 1;
                black_box(cc.on_feedback(&fb, t));
            }
            black_box(stream.write(p, None, Some((3, twcc)), now, &mut scratch))
        })
    });
    g.bench_function("vp8_rewrite_and_protect", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let mut p = pkt.clone();
            p.header.sequence_number = seq;
            let patch = Vp8Patch::new(&desc, Some((seq & 0x7fff, true)), None);
            black_box(stream.write(p, Some(patch), None, now, &mut scratch))
        })
    });
    g.finish();
}

criterion_group!(benches, rtp, forwarding, egress, signaling);
criterion_main!(benches);
