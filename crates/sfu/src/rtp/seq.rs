//! Widens 16-bit RTP sequence numbers to `u64` at ingress and recognises duplicates.
//!
//! Every retransmission, RTX copy or replayed packet with a sequence number already seen
//! is reported as a duplicate, so that each packet is forwarded once. Sequence numbers
//! are widened once, here; everything downstream compares `u64`s and never wraps.

/// How far back (in packets) duplicates are recognised. Older packets are refused.
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

/// What the tracker made of one sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqResult {
    /// First time seen; `ext` is the widened sequence number. `newest` when it advanced
    /// the highest sequence number (in order, possibly after a gap).
    New { ext: u64, newest: bool },
    /// Already seen within the window.
    Duplicate { ext: u64 },
    /// Older than the window: cannot tell, so refused.
    TooOld,
}

/// Per-SSRC state: the highest widened sequence number and a bitmap of the last
/// [`WINDOW`] sequence numbers received.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    highest: Option<u64>,
    seen: [u64; WORDS],
}

impl Default for SeqTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl SeqTracker {
    pub fn new() -> Self {
        Self {
            highest: None,
            seen: [0; WORDS],
        }
    }

    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Widens `seq` relative to the highest seen so far: the nearest value with the same
    /// low 16 bits. The first sequence number lands in the second 65536-cycle so that
    /// slightly older packets still widen to a positive value.
    pub fn widen(&self, seq: u16) -> u64 {
        match self.highest {
            None => (1 << 16) | seq as u64,
            Some(h) => {
                let delta = seq.wrapping_sub(h as u16) as i16 as i64;
                (h as i64 + delta).max(0) as u64
            }
        }
    }

    pub fn push(&mut self, seq: u16) -> SeqResult {
        let ext = self.widen(seq);
        match self.highest {
            None => {
                self.highest = Some(ext);
                self.set(ext);
                SeqResult::New { ext, newest: true }
            }
            Some(h) if ext > h => {
                let advance = ext - h;
                if advance >= WINDOW {
                    self.seen = [0; WORDS];
                } else {
                    for s in h + 1..ext {
                        self.clear(s);
                    }
                }
                self.highest = Some(ext);
                self.set(ext);
                SeqResult::New { ext, newest: true }
            }
            Some(h) => {
                if h - ext >= WINDOW {
                    return SeqResult::TooOld;
                }
                if self.is_set(ext) {
                    SeqResult::Duplicate { ext }
                } else {
                    self.set(ext);
                    SeqResult::New { ext, newest: false }
                }
            }
        }
    }

    fn idx(ext: u64) -> (usize, u64) {
        let bit = ext % WINDOW;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }
    fn set(&mut self, ext: u64) {
        let (w, m) = Self::idx(ext);
        self.seen[w] |= m;
    }
    fn clear(&mut self, ext: u64) {
        let (w, m) = Self::idx(ext);
        self.seen[w] &= !m;
    }
    fn is_set(&self, ext: u64) -> bool {
        let (w, m) = Self::idx(ext);
        self.seen[w] & m != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext_of(r: SeqResult) -> u64 {
        match r {
            SeqResult::New { ext, .. } | SeqResult::Duplicate { ext } => ext,
            SeqResult::TooOld => panic!("too old"),
        }
    }

    #[test]
    fn table() {
        // (input sequence, expected result) applied in order to one tracker.
        let base = 1u64 << 16;
        let cases: &[(u16, SeqResult)] = &[
            (
                65534,
                SeqResult::New {
                    ext: base + 65534,
                    newest: true,
                },
            ),
            (
                65535,
                SeqResult::New {
                    ext: base + 65535,
                    newest: true,
                },
            ),
            // wrap-around
            (
                0,
                SeqResult::New {
                    ext: base + 65536,
                    newest: true,
                },
            ),
            (0, SeqResult::Duplicate { ext: base + 65536 }),
            (65535, SeqResult::Duplicate { ext: base + 65535 }),
            // a gap, then the late packet
            (
                3,
                SeqResult::New {
                    ext: base + 65539,
                    newest: true,
                },
            ),
            (
                2,
                SeqResult::New {
                    ext: base + 65538,
                    newest: false,
                },
            ),
            (2, SeqResult::Duplicate { ext: base + 65538 }),
            (
                1,
                SeqResult::New {
                    ext: base + 65537,
                    newest: false,
                },
            ),
        ];
        let mut t = SeqTracker::new();
        for (i, (seq, want)) in cases.iter().enumerate() {
            assert_eq!(t.push(*seq), *want, "case {i}: seq {seq}");
        }
    }

    #[test]
    fn first_packet_older_neighbours_stay_positive() {
        let mut t = SeqTracker::new();
        assert_eq!(ext_of(t.push(5)), 65536 + 5);
        // 11 packets before the first one, across the wrap: still a positive u64.
        assert_eq!(ext_of(t.push(65530)), 65530);
    }

    #[test]
    fn too_old_and_window_reset() {
        let mut t = SeqTracker::new();
        t.push(0);
        for s in 1..=2000u16 {
            t.push(s);
        }
        assert_eq!(t.push(500), SeqResult::TooOld);
        assert!(matches!(t.push(1500), SeqResult::Duplicate { .. }));
        // A jump larger than the window clears everything.
        assert!(matches!(t.push(6000), SeqResult::New { newest: true, .. }));
        assert!(matches!(t.push(5999), SeqResult::New { newest: false, .. }));
    }

    #[test]
    fn bits_are_cleared_when_the_window_slides() {
        let mut t = SeqTracker::new();
        t.push(0);
        t.push(1);
        // Advance past the window in one step less than WINDOW: old bits must be cleared so
        // that seq (1 + WINDOW) is not seen as a duplicate of seq 1 sharing its bit.
        t.push((WINDOW - 1) as u16);
        assert!(matches!(
            t.push((WINDOW + 1) as u16),
            SeqResult::New { newest: true, .. }
        ));
    }
}
