//! The per-down-track forwarding decision: forward a packet (and how to rewrite it) or
//! drop it (and why). Pure: it takes `now`, returns a [`Decision`] as a value and never
//! touches a socket; the peer layer does the writing.
//!
//! A video down-track starts on a keyframe (after a keyframe request), so a subscriber
//! never decodes from the middle of a group of pictures; audio starts at once. Layers
//! (simulcast encodings) are numbered from 0; a non-simulcast track has only layer 0.

use crate::rtp::Codec;
use crate::rtp::munger::Munger;
use std::time::Instant;

/// What the forwarder needs to know of an incoming packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketInfo {
    pub layer: u8,
    pub ext_seq: u64,
    pub ts: u32,
    pub keyframe: bool,
    /// No payload: padding sent for bandwidth probing; never forwarded.
    pub padding_only: bool,
    /// The VP8 picture id (value, 15-bit form) and TL0PICIDX, when present.
    pub vp8: Option<Vp8Fields>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Fields {
    pub picture_id: Option<(u16, bool)>,
    pub tl0picidx: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Forward(Forward),
    Drop(DropReason),
}

/// How to rewrite a forwarded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub seq: u16,
    pub ts: u32,
    /// New VP8 picture id and TL0PICIDX, when they differ from the packet's (after a
    /// layer switch each layer's numbering must continue the previous one).
    pub vp8: Option<Vp8Fields>,
}

/// Keeps VP8 picture ids and TL0PICIDX continuous across layer switches.
#[derive(Debug, Clone, Copy, Default)]
struct Vp8Munger {
    pid_offset: u16,
    tl0_offset: u8,
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
}

impl Vp8Munger {
    const PID_MOD: u16 = 1 << 15;

    /// A new source starts at `f`: continue the numbering after the last one sent.
    fn restart(&mut self, f: Option<Vp8Fields>) {
        let Some(f) = f else { return };
        if let (Some((pid, _)), Some(last)) = (f.picture_id, self.last_pid) {
            let want = (last + 1) % Self::PID_MOD;
            self.pid_offset = pid.wrapping_sub(want) % Self::PID_MOD;
        }
        if let (Some(tl0), Some(last)) = (f.tl0picidx, self.last_tl0) {
            self.tl0_offset = tl0.wrapping_sub(last.wrapping_add(1));
        }
    }

    fn rewrite(&mut self, f: Option<Vp8Fields>, newest: bool) -> Option<Vp8Fields> {
        let f = f?;
        let pid = f.picture_id.map(|(p, long)| {
            let out = p.wrapping_sub(self.pid_offset) % Self::PID_MOD;
            (if long { out } else { out & 0x7f }, long)
        });
        let tl0 = f.tl0picidx.map(|t| t.wrapping_sub(self.tl0_offset));
        if newest {
            if let Some((p, _)) = pid {
                self.last_pid = Some(p);
            }
            if tl0.is_some() {
                self.last_tl0 = tl0;
            }
        }
        let out = Vp8Fields {
            picture_id: pid,
            tl0picidx: tl0,
        };
        (out != f).then_some(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The down-track is not active (not yet connected, or paused).
    Paused,
    /// Video waits for a keyframe of the layer it starts on.
    WaitingKeyframe,
    /// A layer this subscriber does not receive.
    OtherLayer,
    Padding,
    /// Older than what this down-track already switched past.
    TooOld,
}

/// Forwarding state of one down-track; see the module doc.
#[derive(Debug, Clone)]
pub struct Forwarder {
    video: bool,
    clock_rate: u32,
    active: bool,
    current_layer: Option<u8>,
    target_layer: u8,
    munger: Munger,
    vp8: Vp8Munger,
    highest_seq: Option<u64>,
}

impl Forwarder {
    pub fn new(codec: Codec) -> Self {
        Self {
            video: codec.is_video(),
            clock_rate: codec.clock_rate(),
            active: false,
            current_layer: None,
            target_layer: 0,
            munger: Munger::new(),
            vp8: Vp8Munger::default(),
            highest_seq: None,
        }
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Starts or pauses forwarding. Resuming video waits for a fresh keyframe; the output
    /// numbering continues where it stopped.
    pub fn set_active(&mut self, active: bool) {
        if active && !self.active {
            self.current_layer = None;
        }
        self.active = active;
    }

    pub fn current_layer(&self) -> Option<u8> {
        self.current_layer
    }

    pub fn target_layer(&self) -> u8 {
        self.target_layer
    }

    /// Asks for another layer; the switch happens at that layer's next keyframe.
    pub fn set_target_layer(&mut self, layer: u8) {
        self.target_layer = layer;
    }

    /// The layer for which this down-track waits for a keyframe, if it does.
    pub fn needs_keyframe(&self) -> Option<u8> {
        (self.active && self.video && self.current_layer != Some(self.target_layer))
            .then_some(self.target_layer)
    }

    pub fn on_packet(&mut self, p: &PacketInfo, now: Instant) -> Decision {
        if !self.active {
            return Decision::Drop(DropReason::Paused);
        }
        if self.current_layer != Some(p.layer) {
            if p.layer != self.target_layer {
                return Decision::Drop(DropReason::OtherLayer);
            }
            if self.video && !p.keyframe {
                return Decision::Drop(DropReason::WaitingKeyframe);
            }
            self.munger.restart(p.ext_seq, p.ts, now, self.clock_rate);
            self.vp8.restart(p.vp8);
            self.current_layer = Some(p.layer);
            self.highest_seq = None;
        }
        if p.padding_only {
            self.munger.skip(p.ext_seq);
            return Decision::Drop(DropReason::Padding);
        }
        let newest = self.highest_seq.is_none_or(|h| p.ext_seq > h);
        if newest {
            self.highest_seq = Some(p.ext_seq);
        }
        match self.munger.rewrite(p.ext_seq, p.ts, now) {
            Some(r) => Decision::Forward(Forward {
                seq: r.seq,
                ts: r.ts,
                vp8: self.vp8.rewrite(p.vp8, newest),
            }),
            None => Decision::Drop(DropReason::TooOld),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(layer: u8, seq: u64, ts: u32, keyframe: bool) -> PacketInfo {
        PacketInfo {
            layer,
            ext_seq: seq,
            ts,
            keyframe,
            padding_only: false,
            vp8: None,
        }
    }

    fn fwd(seq: u16, ts: u32) -> Decision {
        Decision::Forward(Forward { seq, ts, vp8: None })
    }

    fn vp8(pid: u16, tl0: u8) -> Option<Vp8Fields> {
        Some(Vp8Fields {
            picture_id: Some((pid, true)),
            tl0picidx: Some(tl0),
        })
    }

    #[test]
    fn vp8_numbering_continues_across_a_switch() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Codec::Vp8);
        f.set_active(true);
        let p = |layer, seq, ts, key, pid, tl0| PacketInfo {
            vp8: vp8(pid, tl0),
            ..pkt(layer, seq, ts, key)
        };
        // Layer 0 starts: numbering kept as is (no rewrite needed).
        assert_eq!(f.on_packet(&p(0, 10, 0, true, 100, 5), t0), fwd(10, 0));
        assert_eq!(
            f.on_packet(&p(0, 11, 3000, false, 101, 5), t0),
            fwd(11, 3000)
        );
        // Switch to layer 1, whose picture ids are elsewhere (and wrap soon).
        f.set_target_layer(1);
        let got = f.on_packet(&p(1, 900, 3000, true, 32767, 200), t0);
        let Decision::Forward(Forward {
            seq, vp8: Some(v), ..
        }) = got
        else {
            panic!("{got:?}")
        };
        assert_eq!(seq, 12);
        assert_eq!(v.picture_id, Some((102, true)));
        assert_eq!(v.tl0picidx, Some(6));
        // The source's picture id wraps at 2^15; the output follows without a jump.
        let got = f.on_packet(&p(1, 901, 6000, false, 0, 201), t0);
        let Decision::Forward(Forward { vp8: Some(v), .. }) = got else {
            panic!("{got:?}")
        };
        assert_eq!(v.picture_id, Some((103, true)));
        assert_eq!(v.tl0picidx, Some(7));
    }

    #[test]
    fn vp8_tl0_wraps_and_7_bit_ids_are_truncated() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Codec::Vp8);
        f.set_active(true);
        let p = |layer, seq, key, pid: u16, long, tl0| PacketInfo {
            vp8: Some(Vp8Fields {
                picture_id: Some((pid, long)),
                tl0picidx: Some(tl0),
            }),
            ..pkt(layer, seq, 0, key)
        };
        assert_eq!(
            f.on_packet(&p(0, 10, true, 127, false, 255), t0),
            fwd(10, 0)
        );
        f.set_target_layer(1);
        let got = f.on_packet(&p(1, 50, true, 5, false, 9), t0);
        let Decision::Forward(Forward { vp8: Some(v), .. }) = got else {
            panic!("{got:?}")
        };
        // 127 + 1 wraps to 0 in 7 bits; TL0PICIDX 255 + 1 wraps to 0.
        assert_eq!(v.picture_id, Some((0, false)));
        assert_eq!(v.tl0picidx, Some(0));
    }

    #[test]
    fn inactive_drops_everything() {
        let mut f = Forwarder::new(Codec::Vp8);
        let now = Instant::now();
        assert_eq!(
            f.on_packet(&pkt(0, 1, 0, true), now),
            Decision::Drop(DropReason::Paused)
        );
        assert_eq!(f.needs_keyframe(), None);
    }

    #[test]
    fn video_starts_on_keyframe() {
        let now = Instant::now();
        let mut f = Forwarder::new(Codec::Vp8);
        f.set_active(true);
        assert_eq!(f.needs_keyframe(), Some(0));
        let cases = [
            (
                pkt(0, 10, 100, false),
                Decision::Drop(DropReason::WaitingKeyframe),
            ),
            (
                pkt(0, 11, 100, false),
                Decision::Drop(DropReason::WaitingKeyframe),
            ),
            (pkt(0, 12, 200, true), fwd(12, 200)),
            (pkt(0, 13, 200, false), fwd(13, 200)),
            (pkt(0, 11, 100, false), Decision::Drop(DropReason::TooOld)),
        ];
        for (i, (p, want)) in cases.iter().enumerate() {
            assert_eq!(f.on_packet(p, now), *want, "case {i}");
        }
        assert_eq!(f.needs_keyframe(), None);
    }

    #[test]
    fn audio_starts_at_once() {
        let now = Instant::now();
        let mut f = Forwarder::new(Codec::Opus);
        f.set_active(true);
        assert_eq!(f.needs_keyframe(), None);
        assert_eq!(f.on_packet(&pkt(0, 5, 960, false), now), fwd(5, 960));
    }

    #[test]
    fn padding_is_dropped_without_a_gap() {
        let now = Instant::now();
        let mut f = Forwarder::new(Codec::Vp8);
        f.set_active(true);
        assert_eq!(f.on_packet(&pkt(0, 1, 0, true), now), fwd(1, 0));
        let mut pad = pkt(0, 2, 0, false);
        pad.padding_only = true;
        assert_eq!(f.on_packet(&pad, now), Decision::Drop(DropReason::Padding));
        assert_eq!(f.on_packet(&pkt(0, 3, 3000, false), now), fwd(2, 3000));
    }

    #[test]
    fn pause_and_resume_waits_for_keyframe_and_continues_numbering() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Codec::Vp8);
        f.set_active(true);
        assert_eq!(f.on_packet(&pkt(0, 1, 0, true), t0), fwd(1, 0));
        assert_eq!(f.on_packet(&pkt(0, 2, 3000, false), t0), fwd(2, 3000));
        f.set_active(false);
        assert_eq!(
            f.on_packet(&pkt(0, 3, 6000, false), t0),
            Decision::Drop(DropReason::Paused)
        );
        f.set_active(true);
        assert_eq!(f.needs_keyframe(), Some(0));
        let t1 = t0 + std::time::Duration::from_millis(1000);
        assert_eq!(
            f.on_packet(&pkt(0, 50, 90_000, false), t1),
            Decision::Drop(DropReason::WaitingKeyframe)
        );
        // Output continues at 3, timestamp advanced by the 1 s of wall time.
        assert_eq!(f.on_packet(&pkt(0, 51, 93_000, true), t1), fwd(3, 93_000));
    }

    #[test]
    fn layer_switch_happens_on_target_keyframe() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Codec::Vp8);
        f.set_active(true);
        assert_eq!(f.on_packet(&pkt(0, 100, 0, true), t0), fwd(100, 0));
        assert_eq!(
            f.on_packet(&pkt(1, 500, 7, true), t0),
            Decision::Drop(DropReason::OtherLayer)
        );
        f.set_target_layer(1);
        assert_eq!(f.needs_keyframe(), Some(1));
        // Until layer 1 has a keyframe, layer 0 keeps flowing.
        assert_eq!(f.on_packet(&pkt(0, 101, 3000, false), t0), fwd(101, 3000));
        assert_eq!(
            f.on_packet(&pkt(1, 501, 3007, false), t0),
            Decision::Drop(DropReason::WaitingKeyframe)
        );
        let t1 = t0 + std::time::Duration::from_millis(10);
        assert_eq!(f.on_packet(&pkt(1, 502, 6007, true), t1), fwd(102, 3900));
        assert_eq!(
            f.on_packet(&pkt(0, 102, 6000, false), t1),
            Decision::Drop(DropReason::OtherLayer)
        );
        assert_eq!(f.on_packet(&pkt(1, 503, 9007, false), t1), fwd(103, 6900));
        assert_eq!(f.needs_keyframe(), None);
    }
}
