//! Room events at 10, 100 and 300 participants (every one publishing audio and video),
//! through the real room code and no sockets (`room::harness` plays the IO):
//!
//! - `join_leave`: one more participant joins (a down-track of every track, an offer)
//!   and leaves again;
//! - `subscription`: one subscriber turns one remote video off and on (re-allocation);
//! - `reallocate_all`: a tick where every member is due (what a speaker change costs:
//!   the room's ranking once, then every member's layers);
//! - `fan_out`: one video packet forwarded to every other member;
//! - `relay/local` and `relay/across`: one video packet to one subscriber in the same
//!   copy of the room, and to one subscriber of another copy (the home relays it as
//!   received, the copy re-publishes and forwards it): the difference is what a relay
//!   costs per packet, channel aside;
//! - `relay/node_sealed` and `relay/node_authenticated`: what the cascade transport does
//!   to one 1,100-byte RTP packet between two nodes, both ends, syscalls aside: marshal,
//!   encode and seal (AES-128-GCM) or tag (HMAC-SHA256), then open or verify, decode,
//!   unmarshal.
//!
//!     cargo bench --bench room
//!
//! The cost per event should grow at most as participants × tracks.

use confab_proto::{MediaKind, Quality, TrackSource};
use confab_sfu::SfuConfig;
use confab_sfu::keys::ParticipantKey;
use confab_sfu::room::harness::Harness;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

const AV: &[(MediaKind, TrackSource)] = &[
    (MediaKind::Audio, TrackSource::Microphone),
    (MediaKind::Video, TrackSource::Camera),
];

fn meeting(n: u64) -> Harness {
    let mut h = Harness::new(SfuConfig {
        max_participants_per_room: 1000,
        ..SfuConfig::default()
    });
    for i in 1..=n {
        let k = h.join(i);
        h.publish(k, AV);
    }
    h
}

/// A keyframe: every down-track takes it.
fn vp8(ssrc: u32, seq: u16) -> rtc::rtp::Packet {
    confab_sfu::room::harness::vp8_packet(ssrc, seq, true, 1100)
}

fn room_events(c: &mut Criterion) {
    let mut g = c.benchmark_group("room");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in [10u64, 100, 300] {
        let mut h = meeting(n);
        let mut next = 10_000;
        g.bench_with_input(BenchmarkId::new("join_leave", n), &n, |b, _| {
            b.iter(|| {
                next += 1;
                let k = h.join(next);
                h.leave(k);
            })
        });
        let viewer = ParticipantKey(1);
        let video = h
            .room
            .tracks()
            .find(|(_, t)| t.kind == MediaKind::Video && t.owner != viewer)
            .map(|(_, t)| t.id.clone())
            .expect("a remote video");
        let mut on = false;
        g.bench_with_input(BenchmarkId::new("subscription", n), &n, |b, _| {
            b.iter(|| {
                on = !on;
                h.subscribe(viewer, &video, on, Quality::High);
            })
        });
        g.bench_with_input(BenchmarkId::new("reallocate_all", n), &n, |b, _| {
            b.iter(|| h.advance(Duration::from_millis(500)))
        });
        let (track, ssrc) = h
            .room
            .tracks()
            .find(|(_, t)| t.kind == MediaKind::Video)
            .map(|(k, t)| (k, t.layers[0].as_ref().expect("a layer").ssrc))
            .expect("a video track");
        // Received and allocated: every subscriber's down-track is on.
        h.rtp(track, vp8(ssrc, 1));
        h.advance(Duration::from_millis(500));
        let mut seq = 1u16;
        g.bench_with_input(BenchmarkId::new("fan_out", n), &n, |b, _| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                black_box(h.rtp(track, vp8(ssrc, seq)).len())
            })
        });
    }
    g.finish();
}

fn relay(c: &mut Criterion) {
    use confab_sfu::room::{Fact, RelayKey};
    let mut g = c.benchmark_group("relay");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let video = &[(MediaKind::Video, TrackSource::Camera)];
    // Baseline: publisher and subscriber in one copy.
    let mut h = meeting(0);
    let alice = h.join(1);
    let t = h.publish(alice, video)[0];
    h.join(2);
    let ssrc = h.room.track(t).unwrap().layers[0].as_ref().unwrap().ssrc;
    h.rtp(t, vp8(ssrc, 1));
    h.advance(Duration::from_millis(600));
    assert_eq!(h.rtp(t, vp8(ssrc, 2)).len(), 1, "the subscriber gets it");
    let mut seq = 2u16;
    g.bench_function("local", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            black_box(h.rtp(t, vp8(ssrc, seq)).len())
        })
    });
    // Across: the subscriber is on another copy.
    let (to_a, to_b) = (RelayKey(0), RelayKey(1));
    let mut a = meeting(0);
    let mut b = meeting(0);
    let alice = a.join(1);
    let t = a.publish(alice, video)[0];
    b.join(2);
    let now = a.now;
    for f in a.room.fact(now, to_b, Fact::Hello) {
        b.room.fact(now, to_a, f);
    }
    b.run();
    let id = a.room.track(t).unwrap().id.clone();
    let copy = b.room.track_key(&id).unwrap();
    a.room.relay_wants(now, &id, to_b, 0b1);
    let hop = |a: &mut Harness, b: &mut Harness, seq: u16| {
        a.rtp(t, vp8(ssrc, seq));
        let (_, p) = a.relayed.pop().expect("relayed");
        b.rtp(copy, p).len()
    };
    hop(&mut a, &mut b, 1);
    b.advance(Duration::from_millis(600));
    assert_eq!(hop(&mut a, &mut b, 2), 1, "the copy forwards it");
    let mut seq = 2u16;
    g.bench_function("across", |bn| {
        bn.iter(|| {
            seq = seq.wrapping_add(1);
            black_box(hop(&mut a, &mut b, seq))
        })
    });
    // Between nodes: the transport's work per packet, both ends.
    use confab_cluster::cascade::wire::{self, Datagram, Key, Kind};
    use confab_sfu::worker::relay::{decode_rtp, encode_rtp};
    let secret = b"a cluster secret, for the bench.";
    let (mut rtp, mut opened) = (Vec::new(), Vec::new());
    for (name, mut tx, mut rx) in [
        (
            "node_sealed",
            Key::encrypting(secret, "node-1"),
            Key::encrypting(secret, "node-2"),
        ),
        ("node_authenticated", Key::new(secret), Key::new(secret)),
    ] {
        let mut n = 0u32;
        g.bench_function(name, |bn| {
            bn.iter(|| {
                n = n.wrapping_add(1);
                let packet = vp8(ssrc, n as u16);
                encode_rtp(&packet, &mut rtp);
                let d = Datagram {
                    node: "node-1",
                    seq: n,
                    kind: Kind::Media {
                        room: "webinar",
                        from: 0,
                        to: 0,
                        track: "TR_0a1b2c3-1",
                        sent_us: 0,
                        rtp: &rtp,
                    },
                };
                let bytes = wire::encode(&mut tx, &d);
                let Kind::Media { rtp: got, .. } =
                    wire::decode(&mut rx, &bytes, &mut opened).unwrap().kind
                else {
                    unreachable!()
                };
                black_box(decode_rtp(got).unwrap().header.sequence_number)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, room_events, relay);
criterion_main!(benches);
