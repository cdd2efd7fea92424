//! Sequence-number and timestamp rewriting for one outgoing stream.
//!
//! A subscriber must see one continuous stream: no sequence gaps where the SFU dropped a
//! packet on purpose (padding, a paused layer), and no jump when the source changes (a
//! simulcast layer switch, a restart). Input sequence numbers are already widened to
//! `u64` (see [`super::seq`]); output sequence numbers are widened too and truncated to
//! 16 bits only on the wire, so wrap-around needs no special case here.
//!
//! The offset between input and output changes at known input sequence numbers (an
//! *epoch* starts after each deliberate drop). A late packet is rewritten with the offset
//! of the epoch it belongs to, so reordering survives a drop.

use std::collections::VecDeque;
use std::time::Instant;

/// Epochs kept for late packets; older ones are refused.
const MAX_EPOCHS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub seq: u16,
    pub ts: u32,
}

#[derive(Debug, Clone, Copy)]
struct Epoch {
    /// First input sequence number of the epoch.
    from_in: u64,
    /// `out = in - seq_offset` (wrapping).
    seq_offset: u64,
}

#[derive(Debug, Clone)]
struct State {
    epochs: VecDeque<Epoch>,
    ts_offset: u32,
    /// Input packets before this one belong to an earlier source: refused.
    floor_in: u64,
    /// None until the first packet of the current source is forwarded.
    highest_in: Option<u64>,
    highest_out: u64,
    last_out_ts: u32,
    last_out_at: Instant,
}

/// Rewrites one outgoing stream; see the module doc.
#[derive(Debug, Clone, Default)]
pub struct Munger {
    state: Option<State>,
}

impl Munger {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_started(&self) -> bool {
        self.state.is_some()
    }

    /// The highest output sequence number sent, widened.
    pub fn highest_out(&self) -> Option<u64> {
        self.state.as_ref().map(|s| s.highest_out)
    }

    /// (Re)starts the stream at the packet `(in_ext, in_ts)`, which will be the next one
    /// forwarded. The first start keeps the input numbering; a restart continues the
    /// output numbering: the next sequence number, and a timestamp advanced by the time
    /// elapsed since the last packet sent (at least one tick).
    pub fn restart(&mut self, in_ext: u64, in_ts: u32, now: Instant, clock_rate: u32) {
        let (seq_offset, ts_offset) = match &self.state {
            None => (0, 0),
            Some(s) => {
                let elapsed = now.saturating_duration_since(s.last_out_at);
                let ticks = (elapsed.as_micros() as u64 * clock_rate as u64 / 1_000_000).max(1);
                let out_ts = s.last_out_ts.wrapping_add(ticks as u32);
                let out_seq = s.highest_out.wrapping_add(1);
                (in_ext.wrapping_sub(out_seq), in_ts.wrapping_sub(out_ts))
            }
        };
        let (highest_out, last_out_ts, last_out_at) = match &self.state {
            None => (in_ext.wrapping_sub(1), in_ts, now),
            Some(s) => (s.highest_out, s.last_out_ts, s.last_out_at),
        };
        self.state = Some(State {
            epochs: VecDeque::from([Epoch {
                from_in: in_ext,
                seq_offset,
            }]),
            ts_offset,
            floor_in: in_ext,
            highest_in: None,
            highest_out,
            last_out_ts,
            last_out_at,
        });
    }

    /// Rewrites a packet to forward. `None` when the packet predates the current source
    /// (or the oldest epoch kept) and must not be sent.
    pub fn rewrite(&mut self, in_ext: u64, in_ts: u32, now: Instant) -> Option<Rewritten> {
        let s = self.state.as_mut()?;
        if in_ext < s.floor_in {
            return None;
        }
        let epoch = s.epochs.iter().rev().find(|e| e.from_in <= in_ext)?;
        let out = in_ext.wrapping_sub(epoch.seq_offset);
        let ts = in_ts.wrapping_sub(s.ts_offset);
        if s.highest_in.is_none_or(|h| in_ext > h) {
            s.highest_in = Some(in_ext);
        }
        // Compared by output number, not input: a late packet whose newer neighbours were
        // skipped padding is the newest sent, and a restart must continue after it (else
        // the next source reuses its number and rewinds the timestamp).
        if out > s.highest_out {
            s.highest_out = out;
            s.last_out_ts = ts;
            s.last_out_at = now;
        }
        Some(Rewritten {
            seq: out as u16,
            ts,
        })
    }

    /// Records a packet deliberately not forwarded (padding, a dropped frame), so that
    /// the output sequence stays contiguous. Only the newest packet can be skipped
    /// without a gap; an older one leaves a hole the receiver will NACK and get nothing for.
    pub fn skip(&mut self, in_ext: u64) {
        let Some(s) = self.state.as_mut() else { return };
        if s.highest_in.is_some_and(|h| in_ext <= h) || in_ext < s.floor_in {
            return;
        }
        let current = s.epochs.back().map_or(0, |e| e.seq_offset);
        s.highest_in = Some(in_ext);
        s.epochs.push_back(Epoch {
            from_in: in_ext + 1,
            seq_offset: current.wrapping_add(1),
        });
        if s.epochs.len() > MAX_EPOCHS {
            s.epochs.pop_front();
            if let Some(front) = s.epochs.front() {
                s.floor_in = s.floor_in.max(front.from_in);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, Clone, Copy)]
    enum Op {
        /// forward input (ext seq, ts) and expect (seq, ts) or None
        Fwd(u64, u32, Option<(u16, u32)>),
        /// skip input ext seq
        Skip(u64),
        /// restart at (ext seq, ts) after `ms` milliseconds
        Restart(u64, u32, u64),
        /// advance the clock
        Wait(u64),
    }
    use Op::*;

    fn run(ops: &[Op]) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut m = Munger::new();
        for (i, op) in ops.iter().enumerate() {
            match *op {
                Fwd(seq, ts, want) => {
                    let got = m.rewrite(seq, ts, now).map(|r| (r.seq, r.ts));
                    assert_eq!(got, want, "op {i}: {op:?}");
                }
                Skip(seq) => m.skip(seq),
                Restart(seq, ts, ms) => {
                    now += Duration::from_millis(ms);
                    m.restart(seq, ts, now, 90_000)
                }
                Wait(ms) => now += Duration::from_millis(ms),
            }
        }
    }

    #[test]
    fn not_started_forwards_nothing() {
        run(&[Fwd(10, 0, None)]);
    }

    #[test]
    fn first_start_keeps_numbering() {
        run(&[
            Restart(100, 5000, 0),
            Fwd(100, 5000, Some((100, 5000))),
            Fwd(101, 5000, Some((101, 5000))),
            Fwd(102, 8000, Some((102, 8000))),
            // older than the start: refused
            Fwd(99, 2000, None),
        ]);
    }

    #[test]
    fn sequence_wraps_on_the_wire() {
        let base = 1u64 << 16;
        run(&[
            Restart(base + 65534, 1, 0),
            Fwd(base + 65534, 1, Some((65534, 1))),
            Fwd(base + 65535, 1, Some((65535, 1))),
            Fwd(base + 65536, 1, Some((0, 1))),
            Fwd(base + 65537, 1, Some((1, 1))),
        ]);
    }

    #[test]
    fn timestamp_wraps() {
        run(&[
            Restart(10, u32::MAX - 1, 0),
            Fwd(10, u32::MAX - 1, Some((10, u32::MAX - 1))),
            Fwd(11, 2, Some((11, 2))),
        ]);
    }

    #[test]
    fn skipped_padding_leaves_no_gap() {
        run(&[
            Restart(10, 0, 0),
            Fwd(10, 0, Some((10, 0))),
            Skip(11),
            Fwd(12, 0, Some((11, 0))),
            Skip(13),
            Skip(14),
            Fwd(15, 0, Some((12, 0))),
        ]);
    }

    #[test]
    fn late_packet_uses_its_epoch() {
        run(&[
            Restart(10, 0, 0),
            Fwd(10, 0, Some((10, 0))),
            // 11 lost for now; 12 is padding and skipped
            Skip(12),
            Fwd(13, 0, Some((12, 0))),
            // 11 arrives late: before the skip, so offset 0
            Fwd(11, 0, Some((11, 0))),
        ]);
    }

    #[test]
    fn restart_continues_after_a_late_packet_behind_skipped_padding() {
        // 11 arrives after 12 was skipped, and is the highest output sent: the new source
        // starts at 12 and after 11's timestamp (found by tests/rewrite_props.rs).
        run(&[
            Restart(10, 0, 0),
            Fwd(10, 0, Some((10, 0))),
            Skip(12),
            Fwd(11, 3000, Some((11, 3000))),
            Restart(5000, 777, 0),
            Fwd(5000, 777, Some((12, 3001))),
        ]);
    }

    #[test]
    fn skipping_an_old_packet_changes_nothing() {
        run(&[
            Restart(10, 0, 0),
            Fwd(10, 0, Some((10, 0))),
            Fwd(12, 0, Some((12, 0))),
            Skip(11),
            Fwd(13, 0, Some((13, 0))),
        ]);
    }

    #[test]
    fn restart_on_a_new_source_continues_output() {
        // Source A up to out seq 12, ts 3000; then 100 ms later source B at seq 5000, ts 777.
        run(&[
            Restart(10, 1000, 0),
            Fwd(10, 1000, Some((10, 1000))),
            Fwd(11, 2000, Some((11, 2000))),
            Fwd(12, 3000, Some((12, 3000))),
            Restart(5000, 777, 100),
            Fwd(5000, 777, Some((13, 3000 + 9000))),
            Fwd(5001, 777 + 3000, Some((14, 3000 + 9000 + 3000))),
            // a late packet of source A is refused
            Fwd(13, 4000, None),
        ]);
    }

    #[test]
    fn restart_without_elapsed_time_still_advances_timestamp() {
        run(&[
            Restart(10, 1000, 0),
            Fwd(10, 1000, Some((10, 1000))),
            Restart(70000, 5, 0),
            Fwd(70000, 5, Some((11, 1001))),
        ]);
    }

    #[test]
    fn restart_across_sequence_wrap() {
        let base = 1u64 << 16;
        run(&[
            Restart(base + 65535, 0, 0),
            Fwd(base + 65535, 0, Some((65535, 0))),
            Wait(10),
            Restart(3, 0, 0),
            Fwd(3, 0, Some((0, 900))),
            Fwd(4, 90, Some((1, 990))),
        ]);
    }

    #[test]
    fn epochs_are_bounded() {
        let mut ops = vec![Restart(0, 0, 0), Fwd(0, 0, Some((0, 0)))];
        // 100 skips: the oldest epochs are forgotten and packets from them refused
        for i in 0..100u64 {
            ops.push(Skip(1 + 2 * i));
            ops.push(Fwd(2 + 2 * i, 0, Some((1 + i as u16, 0))));
        }
        ops.push(Fwd(0, 0, None));
        run(&ops);
    }
}
