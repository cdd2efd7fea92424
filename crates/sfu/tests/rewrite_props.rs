//! Property tests of what one subscriber receives from one published track: ingress
//! widening ([`SeqTracker`], one per layer, as the media worker runs it) followed by the
//! down-track's [`Forwarder`] (layer choice, sequence/timestamp munger, VP8 picture-id
//! munger), over arbitrary scenarios: simulcast layer switches, pauses and resumes, padding,
//! wall-clock gaps, starting values next to every wrap-around (u16 sequence numbers, u32
//! timestamps, 15- and 7-bit picture ids, u8 TL0PICIDX), and a network that loses,
//! duplicates and reorders packets.
//!
//! Two oracles:
//! - `in_order`: a network that only loses packets. Every output sequence number is the
//!   previous one plus one plus the packets of the forwarded layer lost on input in
//!   between; the timestamp gains exactly the input's spacing within a layer, and the wall
//!   time elapsed (at least one tick) across a switch or resume; picture ids and TL0PICIDX
//!   follow the input's within a layer and continue at the previous value plus one across
//!   a switch.
//! - `reordered`: duplicates and reordering too. Packets are forwarded at most once, no
//!   two get the same output number, the output keeps each layer's input order, a gap in
//!   the output is never wider than the input's, a new source continues right after the
//!   highest number sent, and timestamps and picture ids hold as above.
//!
//! A packet late enough to arrive after its layer was switched away from, or after a
//! resume, is dropped; so is a late padding packet. Both leave a hole in the output, which
//! is why the second oracle bounds gaps rather than forbidding them.
//!
//! `PROPTEST_CASES=20000` runs more cases (the default, 256, takes well under a second);
//! `PROPS_TRACE=1` prints every packet and decision of the cases run.

use confab_sfu::forwarder::{Decision, DropReason, Forwarder, PacketInfo, Vp8Fields};
use confab_sfu::rtp::{Codec, SeqResult, SeqTracker};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// Frame interval of every layer (30 fps video; audio is sent at the same pace here).
const FRAME_MS: u64 = 33;

#[derive(Debug, Clone)]
struct Layer {
    seq: u16,
    ts: u32,
    pid: u16,
    tl0: u8,
}

#[derive(Debug, Clone)]
enum Step {
    /// Every layer sends one frame of `packets` packets (the first a keyframe on the layers
    /// set in `key`), then `padding` padding-only packets.
    Frame {
        packets: u8,
        key: u8,
        padding: u8,
    },
    /// The subscriber asks for another layer.
    Target(u8),
    Pause,
    Resume,
    /// Nothing is sent for a while.
    Wait(u64),
}

#[derive(Debug, Clone)]
struct Scenario {
    codec: Codec,
    /// 15-bit picture ids, else 7-bit.
    long_pid: bool,
    layers: Vec<Layer>,
    steps: Vec<Step>,
}

/// What the network does to the packet with the same index (modulo the length).
#[derive(Debug, Clone, Copy)]
struct Net {
    lose: bool,
    dup: bool,
    /// Events the packet is overtaken by.
    delay: u8,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    layer: u8,
    /// Index of the packet in its layer: the true, unwrapped sequence number.
    n: u64,
    seq: u16,
    ts: u32,
    keyframe: bool,
    padding: bool,
    vp8: Option<Vp8Fields>,
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Packet(Sent),
    Target(u8),
    Pause,
    Resume,
}

/// One forwarded packet.
#[derive(Debug, Clone, Copy)]
struct Out {
    /// Which source (a run of the forwarder on one layer, from one restart to the next).
    segment: usize,
    sent: Sent,
    /// Arrival time, ms.
    at: u64,
    seq: u16,
    ts: u32,
    vp8: Option<Vp8Fields>,
}

/// Everything the subscriber received, and what the network delivered.
#[derive(Debug, Default)]
struct Run {
    outs: Vec<Out>,
    /// Per segment: the delivered padding packets of its layer (by `n`).
    padding: Vec<Vec<u64>>,
    /// Per segment: the packet that started it (a keyframe; for audio, any packet) and
    /// its arrival time.
    starts: Vec<(Sent, u64)>,
}

fn pid_modulus(long: bool) -> u16 {
    if long { 1 << 15 } else { 1 << 7 }
}

/// The events as sent, each with its time in ms.
fn timeline(s: &Scenario) -> Vec<(u64, Event)> {
    let mut now = 0;
    let mut frame = 0u64;
    let mut next: Vec<u64> = vec![0; s.layers.len()];
    let ticks = s.codec.clock_rate() as u64 * FRAME_MS / 1000;
    let video = s.codec.is_video();
    let m = pid_modulus(s.long_pid) as u64;
    let mut events = Vec::new();
    for step in &s.steps {
        match *step {
            Step::Frame {
                packets,
                key,
                padding,
            } => {
                now += FRAME_MS;
                for (l, layer) in s.layers.iter().enumerate() {
                    let ts = layer.ts.wrapping_add((frame * ticks) as u32);
                    let vp8 = (s.codec == Codec::Vp8).then(|| Vp8Fields {
                        picture_id: Some((((layer.pid as u64 + frame) % m) as u16, s.long_pid)),
                        // Two temporal layers: TL0PICIDX counts the base-layer frames.
                        tl0picidx: Some(layer.tl0.wrapping_add((frame / 2) as u8)),
                    });
                    let media = if video { packets } else { 1 };
                    for i in 0..media + padding {
                        let n = next[l];
                        next[l] += 1;
                        let is_padding = i >= media;
                        events.push((
                            now,
                            Event::Packet(Sent {
                                layer: l as u8,
                                n,
                                seq: layer.seq.wrapping_add(n as u16),
                                ts,
                                keyframe: video && i == 0 && key & (1 << l) != 0,
                                padding: is_padding,
                                vp8: if is_padding { None } else { vp8 },
                            }),
                        ));
                    }
                }
                frame += 1;
            }
            Step::Target(l) => events.push((now, Event::Target(l % s.layers.len() as u8))),
            Step::Pause => events.push((now, Event::Pause)),
            Step::Resume => events.push((now, Event::Resume)),
            Step::Wait(ms) => now += ms,
        }
    }
    events
}

/// The events as received: packets lost, duplicated and delayed past later events by
/// `net`; arrival times never go backwards.
fn deliver(events: Vec<(u64, Event)>, net: &[Net]) -> Vec<(u64, Event)> {
    let mut keyed = Vec::new();
    let mut packets = 0;
    for (i, (at, ev)) in events.into_iter().enumerate() {
        let i = i as u64;
        match ev {
            Event::Packet(_) => {
                let n = net[packets % net.len()];
                packets += 1;
                if n.lose {
                    continue;
                }
                let slot = i + n.delay as u64;
                keyed.push((2 * slot + 1, at, ev));
                if n.dup {
                    keyed.push((2 * (slot + 2) + 1, at, ev));
                }
            }
            _ => keyed.push((2 * i, at, ev)),
        }
    }
    keyed.sort_by_key(|(k, _, _)| *k);
    let mut last = 0;
    keyed
        .into_iter()
        .map(|(_, at, ev)| {
            last = last.max(at);
            (last, ev)
        })
        .collect()
}

/// Runs the received events through the ingress trackers and one down-track, checking the
/// trackers on the way: sequence numbers widen to the true ones whatever the wraps, and
/// exactly the repeated packets are duplicates.
fn run(s: &Scenario, received: &[(u64, Event)]) -> Result<Run, TestCaseError> {
    let t0 = Instant::now();
    let trace = std::env::var_os("PROPS_TRACE").is_some();
    let mut trackers: Vec<SeqTracker> = s.layers.iter().map(|_| SeqTracker::new()).collect();
    let mut base: Vec<Option<u64>> = vec![None; s.layers.len()];
    let mut delivered = HashSet::new();
    let mut fw = Forwarder::new(s.codec);
    fw.set_active(true);
    let mut r = Run::default();
    let mut segment: Option<usize> = None;
    for &(at, ev) in received {
        let now = t0 + Duration::from_millis(at);
        let p = match ev {
            Event::Packet(p) => p,
            Event::Target(l) => {
                if trace {
                    eprintln!("{at} target {l}");
                }
                fw.set_target_layer(l);
                continue;
            }
            Event::Pause => {
                fw.set_active(false);
                continue;
            }
            Event::Resume => {
                fw.set_active(true);
                continue;
            }
        };
        let l = p.layer as usize;
        let first = delivered.insert((p.layer, p.n));
        let ext = match trackers[l].push(p.seq) {
            SeqResult::New { ext, .. } => {
                prop_assert!(first, "{p:?} delivered again but not a duplicate");
                ext
            }
            SeqResult::Duplicate { ext } => {
                prop_assert!(!first, "{p:?} a duplicate on its first delivery");
                prop_assert_eq!(Some(ext - p.n), base[l]);
                continue;
            }
            SeqResult::TooOld => return Err(TestCaseError::fail(format!("{p:?} too old"))),
        };
        let b = *base[l].get_or_insert(ext - p.n);
        prop_assert_eq!(ext - p.n, b, "{:?} widened to {}", p, ext);

        let info = PacketInfo {
            layer: p.layer,
            ext_seq: ext,
            ts: p.ts,
            keyframe: p.keyframe,
            padding_only: p.padding,
            vp8: p.vp8,
        };
        let before = fw.current_layer();
        let decision = fw.on_packet(&info, now);
        if trace {
            eprintln!("{at} {p:?} -> {decision:?}");
        }
        let started = before != Some(p.layer)
            && matches!(
                decision,
                Decision::Forward(_) | Decision::Drop(DropReason::Padding)
            );
        if started {
            segment = Some(segment.map_or(0, |s| s + 1));
            r.padding.push(Vec::new());
            r.starts.push((p, at));
        }
        match decision {
            Decision::Forward(f) => r.outs.push(Out {
                segment: segment.expect("forwarded outside a segment"),
                sent: p,
                at,
                seq: f.seq,
                ts: f.ts,
                vp8: f.vp8.or(p.vp8),
            }),
            Decision::Drop(DropReason::Padding) => {
                let seg = segment.expect("padding outside a segment");
                r.padding[seg].push(p.n);
            }
            Decision::Drop(_) => {}
        }
    }
    Ok(r)
}

fn ts_ticks(ms: u64, codec: Codec) -> u32 {
    (ms * codec.clock_rate() as u64 / 1000).max(1) as u32
}

/// The timestamp of `o`, the first packet forwarded of a new segment, after `prev`, the last
/// of the previous one: the wall time from `prev` to the segment's start, at least one
/// tick, plus the input's spacing from the start to `o`.
fn ts_after_switch(r: &Run, codec: Codec, prev: &Out, o: &Out) -> u32 {
    let (start, at) = r.starts[o.segment];
    prev.ts
        .wrapping_add(ts_ticks(at - prev.at, codec))
        .wrapping_add(o.sent.ts.wrapping_sub(start.ts))
}

/// Picture id and TL0PICIDX of `b` against `a`: within a segment they move as the input's
/// do; `b` starting a segment continues at `a`'s plus one (`a` the last packet of the
/// previous source).
fn check_vp8(s: &Scenario, a: &Out, b: &Out) -> Result<(), TestCaseError> {
    let m = pid_modulus(s.long_pid);
    let (Some(va), Some(vb)) = (a.vp8, b.vp8) else {
        return Ok(());
    };
    let (ia, ib) = (a.sent.vp8.unwrap(), b.sent.vp8.unwrap());
    let pid = |v: Vp8Fields| v.picture_id.unwrap().0;
    let tl0 = |v: Vp8Fields| v.tl0picidx.unwrap();
    for v in [va, vb] {
        prop_assert!(pid(v) < m, "picture id {} out of range", pid(v));
        prop_assert_eq!(v.picture_id.unwrap().1, s.long_pid);
    }
    let out_pid = pid(vb).wrapping_sub(pid(va)) % m;
    let out_tl0 = tl0(vb).wrapping_sub(tl0(va));
    if a.segment == b.segment {
        prop_assert_eq!(
            out_pid,
            pid(ib).wrapping_sub(pid(ia)) % m,
            "{:?} -> {:?}",
            a,
            b
        );
        prop_assert_eq!(out_tl0, tl0(ib).wrapping_sub(tl0(ia)), "{:?} -> {:?}", a, b);
    } else {
        prop_assert_eq!(out_pid, 1, "picture id across a switch: {:?} -> {:?}", a, b);
        prop_assert_eq!(out_tl0, 1, "TL0PICIDX across a switch: {:?} -> {:?}", a, b);
    }
    Ok(())
}

/// The exact output of a network that only loses packets, in arrival order.
fn check_in_order(s: &Scenario, r: &Run) -> Result<(), TestCaseError> {
    let mut prev: Option<&Out> = None;
    for o in &r.outs {
        // What `o` follows in its segment: the packet forwarded before it, else the packet
        // before the segment's start. The packets in between that did arrive are padding
        // (skipped); the others were lost, and each leaves a gap.
        let seg = o.segment;
        let base = r
            .outs
            .iter()
            .filter(|x| x.segment == seg && x.sent.n < o.sent.n)
            .map(|x| x.sent.n as i64)
            .max()
            .unwrap_or(r.starts[seg].0.n as i64 - 1);
        let skipped = r.padding[seg]
            .iter()
            .filter(|&&x| x as i64 > base && x < o.sent.n)
            .count() as i64;
        let Some(a) = prev else {
            if s.codec.is_video() {
                prop_assert_eq!(o.seq, o.sent.seq, "the first start keeps the numbering");
                prop_assert_eq!(o.ts, o.sent.ts);
            }
            prev = Some(o);
            continue;
        };
        let step = o.sent.n as i64 - base - skipped;
        prop_assert_eq!(
            o.seq,
            a.seq.wrapping_add(step as u16),
            "sequence: {:?} after {:?}",
            o,
            a
        );
        let want_ts = if a.segment == o.segment {
            a.ts.wrapping_add(o.sent.ts.wrapping_sub(a.sent.ts))
        } else {
            ts_after_switch(r, s.codec, a, o)
        };
        prop_assert_eq!(o.ts, want_ts, "timestamp: {:?} after {:?}", o, a);
        check_vp8(s, a, o)?;
        prev = Some(o);
    }
    Ok(())
}

/// Widens the output sequence numbers as a receiver does (nearest to the highest so far).
fn widen_outputs(r: &Run) -> Vec<u64> {
    let mut highest: Option<u64> = None;
    r.outs
        .iter()
        .map(|o| {
            let w = match highest {
                None => (1 << 32) + o.seq as u64,
                Some(h) => (h as i64 + o.seq.wrapping_sub(h as u16) as i16 as i64) as u64,
            };
            highest = Some(highest.map_or(w, |h| h.max(w)));
            w
        })
        .collect()
}

fn check_reordered(s: &Scenario, r: &Run) -> Result<(), TestCaseError> {
    let wide = widen_outputs(r);
    let mut by_out = HashMap::new();
    let mut by_in = HashSet::new();
    // Per segment, its packets by input order.
    let mut segments: BTreeMap<usize, Vec<(u64, &Out)>> = BTreeMap::new();
    for (o, &w) in r.outs.iter().zip(&wide) {
        prop_assert!(
            by_in.insert((o.sent.layer, o.sent.n)),
            "forwarded twice: {:?}",
            o
        );
        if let Some(other) = by_out.insert(w, o) {
            return Err(TestCaseError::fail(format!(
                "output {} given to {:?} and {:?}",
                o.seq, other, o
            )));
        }
        segments.entry(o.segment).or_default().push((w, o));
    }
    let mut last: Option<(u64, &Out)> = None;
    for (seg, mut outs) in segments {
        outs.sort_by_key(|(_, o)| o.sent.n);
        for pair in outs.windows(2) {
            let ((wa, a), (wb, b)) = (pair[0], pair[1]);
            let gap_in = b.sent.n - a.sent.n;
            let pads = r.padding[seg]
                .iter()
                .filter(|&&n| n > a.sent.n && n < b.sent.n)
                .count() as u64;
            prop_assert!(
                wb > wa && wb - wa <= gap_in && wb - wa + pads >= gap_in,
                "{:?} -> {:?}: output gap {}, input gap {}, {} padding",
                a,
                b,
                wb as i64 - wa as i64,
                gap_in,
                pads
            );
            let want_ts = a.ts.wrapping_add(b.sent.ts.wrapping_sub(a.sent.ts));
            prop_assert_eq!(b.ts, want_ts, "timestamp: {:?} -> {:?}", a, b);
            check_vp8(s, a, b)?;
        }
        let &(w_first, first) = &outs[0];
        if let Some((w_last, prev)) = last {
            prop_assert_eq!(
                w_first,
                w_last + 1,
                "new source: {:?} after {:?}",
                first,
                prev
            );
            let want_ts = ts_after_switch(r, s.codec, prev, first);
            prop_assert_eq!(
                first.ts,
                want_ts,
                "timestamp of a new source: {:?} after {:?}",
                first,
                prev
            );
            check_vp8(s, prev, first)?;
        }
        let &(w, o) = outs.last().expect("a segment forwards its first packet");
        last = Some((w, o));
    }
    Ok(())
}

fn layer() -> impl Strategy<Value = Layer> {
    (
        prop_oneof![any::<u16>(), 65_400..=u16::MAX],
        prop_oneof![any::<u32>(), u32::MAX - 300_000..=u32::MAX],
        prop_oneof![0..1u16 << 15, (1u16 << 15) - 40..1 << 15],
        prop_oneof![any::<u8>(), 230..=u8::MAX],
    )
        .prop_map(|(seq, ts, pid, tl0)| Layer { seq, ts, pid, tl0 })
}

fn step(layers: u8) -> impl Strategy<Value = Step> {
    let frame = (
        1..=3u8,
        prop_oneof![3 => Just(0u8), 1 => 0..8u8],
        prop_oneof![3 => Just(0u8), 1 => 1..=3u8],
    )
        .prop_map(|(packets, key, padding)| Step::Frame {
            packets,
            key,
            padding,
        });
    prop_oneof![
        12 => frame,
        2 => (0..layers).prop_map(Step::Target),
        1 => Just(Step::Pause),
        1 => Just(Step::Resume),
        1 => prop_oneof![0..50u64, 1_000..70_000u64].prop_map(Step::Wait),
    ]
}

fn scenario(codecs: &'static [Codec]) -> impl Strategy<Value = Scenario> {
    (
        prop::sample::select(codecs),
        any::<bool>(),
        prop::collection::vec(layer(), 3),
        1..=3u8,
    )
        .prop_flat_map(|(codec, long_pid, mut layers, n)| {
            let n = if codec.is_video() { n } else { 1 };
            layers.truncate(n as usize);
            if !long_pid {
                for l in &mut layers {
                    l.pid %= 128;
                }
            }
            prop::collection::vec(step(n), 1..150).prop_map(move |steps| Scenario {
                codec,
                long_pid,
                layers: layers.clone(),
                steps,
            })
        })
}

fn net(reorder: bool) -> impl Strategy<Value = Vec<Net>> {
    let one = (
        prop::bool::weighted(0.05),
        prop::bool::weighted(if reorder { 0.05 } else { 0.0 }),
        if reorder {
            prop_oneof![4 => Just(0u8), 1 => 1..=4u8].boxed()
        } else {
            Just(0u8).boxed()
        },
    )
        .prop_map(|(lose, dup, delay)| Net { lose, dup, delay });
    prop::collection::vec(one, 1..64)
}

proptest! {
    // Failing cases are saved beside this file (rewrite_props.proptest-regressions) and
    // replayed first on every run.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions"
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn in_order(s in scenario(&[Codec::Vp8, Codec::Opus]), net in net(false)) {
        let received = deliver(timeline(&s), &net);
        let r = run(&s, &received)?;
        check_in_order(&s, &r)?;
    }

    #[test]
    fn reordered(s in scenario(&[Codec::Vp8]), net in net(true)) {
        let received = deliver(timeline(&s), &net);
        let r = run(&s, &received)?;
        check_reordered(&s, &r)?;
    }
}
